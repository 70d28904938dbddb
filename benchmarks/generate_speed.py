"""Generation speed: samples/s of cached decoding against the reference path (feeding memories back
through model.forward), batch 1 and 16, in one run. Cached decoding (``model.step`` over the ring
buffer, what `txl-audio generate` uses) is timed "eager" and, on CUDA, also replayed as a CUDA
"graph" (the default there).

Both start from a prompt that fills the memory (mem_len tokens; not timed), then time steady-state
steps: one model step plus drawing the next token (temperature 1). The reference path runs fewer
steps (it is slow), so its context is on average shorter than the cached path's, which favours it.

    python benchmarks/generate_speed.py                      # CPU, small model and the issue-3 config
    python benchmarks/generate_speed.py --device cuda --dtype bf16 --batch 1 16 64 --config audio_small.toml

Prints a table and writes benchmarks/results/generate_speed.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from txl_audio.audio import SAMPLE_RATE  # noqa: E402
from txl_audio.config import ModelConfig, load_config  # noqa: E402
from txl_audio.decoders import CachedDecoder, make_decoder  # noqa: E402
from txl_audio.devices import device_name  # noqa: E402
from txl_audio.generate import now  # noqa: E402
from txl_audio.model import TransformerXL  # noqa: E402

ISSUE3 = dict(n_layer=4, d_model=256, n_head=4, d_head=64, d_inner=1024, tgt_len=512, mem_len=1024)
CONFIGS = {
    "small": dict(n_layer=2, d_model=128, n_head=2, d_head=64, d_inner=512, tgt_len=128, mem_len=256),
    # the model issue's benchmark configuration, with its generation memory length
    "issue3": ISSUE3,
    # the same trunk with the 16-bit heads (model/heads.py): what a head adds to a cached step
    "issue3_dual": dict(**ISSUE3, vocab_size=65_536, head="dual_softmax"),
    "issue3_mixture": dict(**ISSUE3, vocab_size=65_536, head="logistic_mixture", lp_order=32,
                           lp_coefficients="fitted"),
    # the dual softmax on the fitted LPC with the prior's loop open as sampling runs it (issue 28): a
    # fixed predictor and an anchored level, each draw rescaled to the level (one pass over 65,536 levels)
    "issue3_dual_open": dict(**ISSUE3, vocab_size=65_536, head="dual_softmax", lp_order=32,
                             lp_coefficients="fitted"),
}
# 16-bit heads: no reference timing (it would build 65,536 log-probabilities per token); their cost is
# read against the issue-3 softmax row of the same run instead (head_cost = its rate / theirs)
NO_REFERENCE = ("issue3_dual", "issue3_mixture", "issue3_dual_open")
OPEN_LOOP = ("issue3_dual_open",)


def open_loop(model: TransformerXL) -> None:
    """The sampler's open loop (txl_audio.generate.open_loop_prior) with a stand-in for a checkpoint's
    corpus predictor: x_t = 0.9 x_{t-1}, the level starting (and anchored) at 300 levels."""
    a = np.zeros(model.lp.order)
    a[0] = 0.9
    model.lp.long_term = (a, 300.0)
    model.lp.open_loop = True


DECODERS = ("graph", "eager")  # cached decoding replayed as a CUDA graph, or run op by op


def time_decoding(model, batch, kind, steps, min_seconds, device):
    """(samples per second over the batch, steps timed); ``kind``: graph, eager or reference."""
    cfg = model.config
    g = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (batch, max(cfg.mem_len, 1)), generator=g, device=device)
    with torch.inference_mode():
        if kind == "reference":
            dec = make_decoder(model, batch, "reference")
        else:
            dec = make_decoder(model, batch, "cached", cuda_graph=kind == "graph")
        predicted = dec.prefill(prompt)
        # warm-up (allocator, kernels): past the decoder's eager steps and the CUDA graph's capture,
        # so the timed steps are replays
        for _ in range(CachedDecoder.EAGER_STEPS + 2):
            predicted = dec.step(predicted.sample(1.0, generator=g))
        t0 = now(device)
        n = 0
        # rounds of `steps` steps; the clock (a device sync on CUDA) is read between rounds only
        while n == 0 or (now(device) - t0 < min_seconds and n < 20 * steps):
            for _ in range(steps):
                predicted = dec.step(predicted.sample(1.0, generator=g))
            n += steps
        elapsed = now(device) - t0
    return batch * n / elapsed, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--config", action="append", default=[], help="also a recipe TOML's [model] section")
    ap.add_argument("--steps", type=int, default=200, help="cached steps to time (at least)")
    ap.add_argument("--ref-steps", type=int, default=10, help="reference steps to time (at least)")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--no-reference", action="store_true", help="time the cached path only")
    ap.add_argument("--decoders", nargs="+", default=None, choices=DECODERS,
                    help="cached decoding as a CUDA graph and/or eager (default: both on CUDA, eager on CPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, as txl-audio generate uses; 0 = leave as is)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "generate_speed.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    decoders = args.decoders or (list(DECODERS) if device.type == "cuda" else ["eager"])

    models = [(name, ModelConfig(**{"vocab_size": 256, "dropout": 0.0, **CONFIGS[name]}))
              for name in args.models]
    for path in args.config:
        models.append((Path(path).stem, load_config(path, ["model.dropout=0.0"]).model))

    rows = []
    for name, cfg in models:
        torch.manual_seed(0)
        model = TransformerXL(cfg).to(device).eval()
        if name in OPEN_LOOP:
            open_loop(model)
        if args.dtype == "bf16":
            model = model.to(torch.bfloat16)
        n_params = sum(p.numel() for p in model.parameters())
        for batch in args.batch:
            row = {"model": name, "n_layer": cfg.n_layer, "d_model": cfg.d_model, "tgt_len": cfg.tgt_len,
                   "mem_len": cfg.mem_len, "params": n_params, "batch": batch}
            for kind in decoders:
                rate, n = time_decoding(model, batch, kind, args.steps, args.min_seconds, device)
                row.update({f"{kind}_samples_per_s": rate, f"{kind}_steps": n})
            best = max(decoders, key=lambda k: row[f"{k}_samples_per_s"])
            cached = row[f"{best}_samples_per_s"]
            row.update(cached_samples_per_s=cached, cached_decoder=best,
                       cached_realtime_factor=cached / SAMPLE_RATE)
            if not args.no_reference and name not in NO_REFERENCE:
                ref, n_ref = time_decoding(model, batch, "reference", args.ref_steps, args.min_seconds / 2,
                                           device)
                row.update(reference_samples_per_s=ref, reference_steps=n_ref, speedup=cached / ref)
            base = next((r for r in rows if r["model"] == "issue3" and r["batch"] == batch), None)
            if name in NO_REFERENCE and base is not None:
                row.update(head=cfg.head, head_cost=base["cached_samples_per_s"] / cached)
            rows.append(row)
            print(_row_text(row), flush=True)

    info = {"device": device_name(device), "torch": torch.__version__, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]), "rows": rows}
    print()
    print(table(info))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _row_text(r: dict) -> str:
    kinds = "  ".join(f"{k} {r[f'{k}_samples_per_s']:9.1f}/s" for k in DECODERS if f"{k}_steps" in r)
    ref = f"  reference {r['reference_samples_per_s']:9.1f}/s  x{r['speedup']:.1f}" if "speedup" in r else ""
    if "head_cost" in r:
        ref += f"  (the 16-bit head costs {r['head_cost']:.2f}x the 8-bit softmax's step)"
    return f"{r['model']:>12} batch {r['batch']:3d}: {kinds}{ref}"


def table(info: dict) -> str:
    lines = [f"generation speed on {info['device']}, torch {info['torch']}, {info['dtype']}",
             "| model | layers x d_model | mem_len + tgt_len | batch | CUDA graph samples/s "
             "| eager samples/s | x real time (best) | reference samples/s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in info["rows"]:
        ref = (f"{r['reference_samples_per_s']:,.0f} | {r['speedup']:.1f}x" if "speedup" in r else "- | -")
        if "head_cost" in r:  # a 16-bit head: its step's time against the issue-3 softmax row's
            ref = f"- | 16-bit head: {r['head_cost']:.2f}x the softmax step"
        lines.append(f"| {r['model']} | {r['n_layer']} x {r['d_model']} | {r['mem_len']} + {r['tgt_len']} "
                     f"| {r['batch']} | {_rate(r, 'graph')} | {_rate(r, 'eager')} "
                     f"| {r['cached_realtime_factor']:.3f} "
                     f"| {ref} |")
    return "\n".join(lines)


def _rate(r: dict, kind: str) -> str:
    return f"{r[f'{kind}_samples_per_s']:,.0f}" if f"{kind}_samples_per_s" in r else "-"


if __name__ == "__main__":
    raise SystemExit(main())
