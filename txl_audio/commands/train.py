"""``txl-audio train``: train a model from a TOML config into a run directory."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from txl_audio.config import load_config
from txl_audio.tokenizers import metric_name


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="TOML config (sections model, data, train), e.g. recipes/configs/tiny_cpu.toml; "
                        "with --resume and no --config, the run's own config.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set model.n_layer=6 "
                        "--set data.corpus=runs/x/corpus (repeatable)")
    p.add_argument("--out", type=Path, required=True,
                   help="run directory: config.toml, metrics.jsonl, curves.png, checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = ("Several GPUs or nodes: torchrun --nproc_per_node N -m txl_audio train ... "
                "(train.batch_size is the global batch).")


def run(args: argparse.Namespace) -> int:
    from txl_audio.train import train  # torch: see commands/__init__.py

    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise ValueError("--config is required (it may be left out only with --resume)")
        config_path = args.out / "config.toml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no config.toml in the run directory; pass --config")
    config = load_config(config_path, args.overrides)
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        v = result.valid
        if v:
            shown = (f"{v['bits']:.4f} {metric_name(v['unit'], v.get('levels'))}" if "bits" in v
                     else f"perplexity {v['ppl']:.2f}")
            print(f"step {result.step} ({result.stopped_by}): valid {shown} ({v['tokens']:,} tokens, "
                  f"mem_len {v['mem_len']}); best loss {result.best_valid_loss:.4f} nats")
        else:
            last = next((x for x in reversed(result.losses) if math.isfinite(x)), float("nan"))
            print(f"step {result.step} ({result.stopped_by}): train loss {last:.4f} nats")
        print(f"run written to {args.out} (best.pt, {result.checkpoint.name if result.checkpoint else '-'}, "
              "metrics.jsonl, curves.png)")
    return 0
