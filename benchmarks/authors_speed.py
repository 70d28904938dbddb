"""Throughput: ours vs the authors' own PyTorch Transformer-XL, measured in the same run.

The authors' code (kimiyoung/transformer-xl, ``pytorch/mem_transformer.py``, ``MemTransformerLM``)
is not part of this project: export their ``pytorch/`` folder somewhere outside the tree and pass
its path, e.g.

    git clone https://github.com/kimiyoung/transformer-xl /tmp/transformer-xl
    python benchmarks/authors_speed.py --authors /tmp/transformer-xl/pytorch
    python benchmarks/authors_speed.py --authors /tmp/transformer-xl/pytorch --quick   # smoke run

Both models get the configuration of ``model_speed.py`` (n_layer 4, d_model 256, 4 heads, d_head 64,
d_inner 1024, vocab 256, tgt_len 512, mem_len 512, batch 4, dropout 0.1, float32, 2 threads) and the
same weights: ours is built and initialised, then copied into theirs. Theirs shares the positional
biases u, v (``r_w_bias``, ``r_r_bias``) across layers, ours has one pair per layer, so every layer
of ours is first given layer 0's pair; before timing, a forward over two segments (the second
attending the first through memory, dropout off) checks that both compute the same losses.

Measured, alternating the two implementations step by step in one process (so load from other
processes hits both alike), each carrying its own memory, one untimed warm-up step each, then
8 timed steps each (2 with ``--quick``):

- training: forward + backward + AdamW (lr 1e-4), dropout on;
- evaluation: forward with memory under ``torch.no_grad``; ours with ``keep_kv=True`` as
  ``txl-audio evaluate`` does, theirs re-projecting the memory every segment as their ``eval.py``
  does.

Tokens/s = batch * tgt_len / seconds, from the fastest step ("best") and the median step. Their
forward is time-first, ``model(data (T, B), target (T, B), *mems) -> [loss (T, B), *new_mems]``;
their segments are made time-first before timing, as their data iterator yields them.

Runtime patches (their files are never edited; the patches live in ``load_authors`` below):

1. ``utils/proj_adaptive_softmax.py`` parses ``torch.version.cuda`` at import
   (``int(torch.version.cuda.split('.')[0])``), which is None on a CPU-only torch. The import is
   done with ``torch.version.cuda`` temporarily set to a version string. The two constants it
   computes are only read in a commented-out branch, so nothing they compute changes.
2. Their attention masks are ``uint8`` (``.byte()``), and ``masked_fill`` in torch >= 2 accepts only
   bool masks (it raises). ``RelPartialLearnableMultiHeadAttn.forward`` is wrapped to pass the same
   mask as ``bool``: the same positions are masked with the same ``-inf``, so the attention is
   unchanged; the conversion costs one (T, M+T) byte copy per layer and step (~0.5 MB here),
   counted in their time.

Their ``utils/`` folder is put on ``sys.path`` (their module does ``sys.path.append('utils')``,
relative to their working directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import _segments, bench_config, make_eval_step, make_train_step, time_steps  # noqa: E402

from txl_audio.config import ModelConfig  # noqa: E402
from txl_audio.model import TransformerXL  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "authors_speed.json"

PATCHES = [
    "proj_adaptive_softmax imported with torch.version.cuda set to a version string (CPU torch has "
    "None; the constants parsed from it are unused)",
    "RelPartialLearnableMultiHeadAttn.forward wrapped to pass the uint8 attention mask as bool (torch "
    ">= 2 masked_fill needs bool; same positions masked)",
]


# ---- the authors' code ------------------------------------------------------------------------------


def load_authors(path: Path) -> ModuleType:
    """Import their ``mem_transformer.py`` from ``path`` (their ``pytorch/`` folder), with the
    runtime patches described in the module docstring."""
    path = Path(path).resolve()
    src = path / "mem_transformer.py"
    if not src.is_file() or not (path / "utils" / "proj_adaptive_softmax.py").is_file():
        raise SystemExit(
            f"--authors {path}: expected the pytorch/ folder of kimiyoung/transformer-xl "
            f"(with mem_transformer.py and utils/proj_adaptive_softmax.py); get it with "
            f"`git clone https://github.com/kimiyoung/transformer-xl` and pass its pytorch/ folder"
        )
    for p in (str(path / "utils"), str(path)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location("authors_mem_transformer", src)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # patch 1: their import parses torch.version.cuda, None on CPU builds
    with mock.patch.object(torch.version, "cuda", torch.version.cuda or "0.0"):
        spec.loader.exec_module(module)

    # patch 2: uint8 masks -> bool (same mask), as torch >= 2 masked_fill requires
    attn = module.RelPartialLearnableMultiHeadAttn
    original = attn.forward

    @functools.wraps(original)
    def forward(self, w, r, r_w_bias, r_r_bias, attn_mask=None, mems=None):  # noqa: ANN001, ANN202
        if attn_mask is not None and attn_mask.dtype == torch.uint8:
            attn_mask = attn_mask.bool()
        return original(self, w, r, r_w_bias, r_r_bias, attn_mask=attn_mask, mems=mems)

    attn.forward = forward
    return module


def authors_model(mt: ModuleType, cfg: ModelConfig) -> torch.nn.Module:
    """Their ``MemTransformerLM`` with our configuration: relative attention (attn_type 0), full
    softmax (no cutoffs), tied embedding and output, post-norm, no extended context."""
    return mt.MemTransformerLM(
        n_token=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
        d_head=cfg.d_head, d_inner=cfg.d_inner, dropout=cfg.dropout, dropatt=cfg.dropatt,
        tie_weight=True, d_embed=cfg.d_model, div_val=1, pre_lnorm=False,
        tgt_len=cfg.tgt_len, ext_len=0, mem_len=cfg.mem_len, cutoffs=[],
        same_length=False, attn_type=0, clamp_len=-1, sample_softmax=-1,
    )  # fmt: skip


def _their_name(ours_name: str) -> str:
    """Our parameter name -> theirs (layer 0's u, v are their shared r_w_bias, r_r_bias)."""
    fixed = {
        "word_emb.weight": "word_emb.emb_layers.0.weight",  # tied with crit.out_layers.0.weight
        "out.bias": "crit.out_layers.0.bias",
        "layers.0.attn.u": "r_w_bias",
        "layers.0.attn.v": "r_r_bias",
    }
    if ours_name in fixed:
        return fixed[ours_name]
    _, i, rest = ours_name.split(".", 2)
    per_layer = {
        "attn.qkv.weight": "dec_attn.qkv_net.weight",
        "attn.out.weight": "dec_attn.o_net.weight",
        "attn.r_net.weight": "dec_attn.r_net.weight",
        "attn_norm.weight": "dec_attn.layer_norm.weight",
        "attn_norm.bias": "dec_attn.layer_norm.bias",
        "ff.fc1.weight": "pos_ff.CoreNet.0.weight",
        "ff.fc1.bias": "pos_ff.CoreNet.0.bias",
        "ff.fc2.weight": "pos_ff.CoreNet.3.weight",
        "ff.fc2.bias": "pos_ff.CoreNet.3.bias",
        "ff_norm.weight": "pos_ff.layer_norm.weight",
        "ff_norm.bias": "pos_ff.layer_norm.bias",
    }
    return f"layers.{i}.{per_layer[rest]}"


@torch.no_grad()
def copy_weights(ours: TransformerXL, theirs: torch.nn.Module) -> None:
    """Give every layer of ours layer 0's u, v (theirs shares one pair), then copy ours into theirs.
    Every parameter of theirs is written (their r_w_bias / r_r_bias are otherwise uninitialised)."""
    for layer in ours.layers[1:]:
        layer.attn.u.copy_(ours.layers[0].attn.u)
        layer.attn.v.copy_(ours.layers[0].attn.v)
    dst = dict(theirs.named_parameters())
    written = set()
    for name, p in ours.named_parameters():
        if name.endswith((".attn.u", ".attn.v")) and not name.startswith("layers.0."):
            continue
        target = _their_name(name)
        if dst[target].shape != p.shape:
            raise ValueError(f"{name} {tuple(p.shape)} vs their {target} {tuple(dst[target].shape)}")
        dst[target].copy_(p)
        written.add(target)
    missing = set(dst) - written
    if missing:
        raise ValueError(f"their parameters not written from ours: {sorted(missing)}")


@torch.no_grad()
def same_function(ours: TransformerXL, theirs: torch.nn.Module, segs: list[torch.Tensor]) -> float:
    """Largest |loss difference| per token over ``segs`` (B, T+1) fed in turn with memory carried,
    dropout off. Both models are left in eval mode."""
    ours.eval()
    theirs.eval()
    mems, their_mems, diff = None, (), 0.0
    for seg in segs:
        out = ours(seg[:, :-1], mems=mems, targets=seg[:, 1:], return_logits=False)
        t = seg.t().contiguous()  # (T+1, B)
        ret = theirs(t[:-1], t[1:], *their_mems)
        diff = max(diff, (out.loss - ret[0].t()).abs().max().item())
        mems, their_mems = out.mems, tuple(ret[1:])
    return diff


# ---- steps in their call convention -----------------------------------------------------------------


def make_authors_train_step(model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """One training step per call (fwd + bwd + AdamW) on a time-first (T+1, B) segment; memory carried."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state: dict = {"mems": ()}

    def step(seg: torch.Tensor) -> None:
        ret = model(seg[:-1], seg[1:], *state["mems"])
        ret[0].mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["mems"] = tuple(ret[1:])

    return step


def make_authors_eval_step(model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """One evaluation forward per call on a time-first (T+1, B) segment (memory carried, no gradients)."""
    state: dict = {"mems": ()}

    @torch.no_grad()
    def step(seg: torch.Tensor) -> None:
        ret = model(seg[:-1], seg[1:], *state["mems"])
        state["mems"] = tuple(ret[1:])

    return step


# ---- measurement ------------------------------------------------------------------------------------


def compare(mt: ModuleType, cfg: ModelConfig, batch: int, steps: int, train: bool) -> dict:
    """Ours vs theirs with the same weights, one step of each in turn; see the module docstring."""
    torch.manual_seed(0)
    ours = TransformerXL(cfg)
    theirs = authors_model(mt, cfg)
    copy_weights(ours, theirs)
    segs = _segments(cfg, batch, steps + 1)  # (B, T+1) each
    res: dict = {"max_abs_loss_diff": same_function(ours, theirs, segs[:2])}
    ours.train(train)
    theirs.train(train)
    their_segs = [s.t().contiguous() for s in segs]  # (T+1, B): time-first, as their iterator yields
    runners = {
        "ours": (make_train_step if train else make_eval_step)(ours),
        "authors": (make_authors_train_step if train else make_authors_eval_step)(theirs),
    }
    inputs = {"ours": segs, "authors": their_segs}
    for name, step in runners.items():  # warm-up step (untimed), builds the memory
        step(inputs[name][0])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(1, steps + 1):
        for name, step in runners.items():
            times[name] += time_steps(step, [inputs[name][i]], warmup=0)
    tokens = batch * cfg.tgt_len
    for name, ts in times.items():
        res[name] = tokens / min(ts)
        res[f"{name}_median"] = tokens / statistics.median(ts)
        res[f"{name}_step_seconds"] = ts
    res["ratio"] = res["ours"] / res["authors"]
    res["ratio_median"] = res["ours_median"] / res["authors_median"]
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ours_version() -> str:
    """The project's commit, and whether txl_audio/ differs from it (what exactly was measured)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "txl_audio"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes in txl_audio/" if dirty else "")


def run(authors: Path, quick: bool = False, out: Path | None = RESULTS, threads: int = 2) -> dict:
    mt = load_authors(authors)
    torch.set_num_threads(threads)
    cfg = bench_config(quick)
    batch, steps = (2, 2) if quick else (4, 8)
    src = Path(authors).resolve() / "mem_transformer.py"
    ours_n = sum(p.numel() for p in TransformerXL(cfg).parameters())
    theirs_n = sum(p.numel() for p in authors_model(mt, cfg).parameters())
    res: dict = {
        "config": dataclasses.asdict(cfg),
        "batch": batch,
        "timed_steps": steps,
        "threads": threads,
        "torch": torch.__version__,
        "machine": f"{_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ours_code": _ours_version(),
        "authors_code": str(src),
        "authors_code_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "runtime_patches": PATCHES,
        "params": {"ours": ours_n, "authors": theirs_n},
        "load_average_start": list(os.getloadavg()),
    }
    res["train"] = compare(mt, cfg, batch, steps, train=True)
    res["eval"] = compare(mt, cfg, batch, steps, train=False)
    res["load_average_end"] = list(os.getloadavg())
    print_table(res)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    return res


def print_table(res: dict) -> None:
    c = res["config"]
    print(
        f"n_layer {c['n_layer']}, d_model {c['d_model']}, heads {c['n_head']}, d_head {c['d_head']}, "
        f"d_inner {c['d_inner']}, vocab {c['vocab_size']}, tgt_len {c['tgt_len']}, mem_len {c['mem_len']}, "
        f"batch {res['batch']}, float32, {res['threads']} threads, torch {res['torch']}, {res['machine']}, "
        f"{res['date']}"
    )
    print(
        f"parameters: ours {res['params']['ours']:,}, authors {res['params']['authors']:,}; "
        f"{res['timed_steps']} timed steps each, alternating; load average "
        f"{res['load_average_start'][0]:.2f} -> {res['load_average_end'][0]:.2f}"
    )
    print()
    print(
        "| tokens/s | ours best | ours median | authors best | authors median | ratio best | ratio median |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, name in (("train", "training (fwd+bwd+AdamW)"), ("eval", "evaluation (fwd with memory)")):
        r = res[key]
        print(
            f"| {name} | {r['ours']:.0f} | {r['ours_median']:.0f} | {r['authors']:.0f} | "
            f"{r['authors_median']:.0f} | {r['ratio']:.2f}x | {r['ratio_median']:.2f}x |"
        )
    print()
    t, e = res["train"]["max_abs_loss_diff"], res["eval"]["max_abs_loss_diff"]
    print(
        f"same weights, same losses: max |loss difference| per token {t:.2e} (training models), "
        f"{e:.2e} (evaluation models)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--authors",
        type=Path,
        required=True,
        help="the pytorch/ folder of kimiyoung/transformer-xl (holds mem_transformer.py)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny configuration, a few seconds (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args(argv)
    run(args.authors, args.quick, args.out, args.threads)


if __name__ == "__main__":
    main()
