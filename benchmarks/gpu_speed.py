"""Training and evaluation throughput on a GPU (bf16 autocast): ours, ours compiled, and the einsum
Transformer-XL, in the same run, for recipe configs; peak memory of each.

    python benchmarks/gpu_speed.py --configs recipes/configs/audio_small.toml recipes/configs/audio_base.toml
    python benchmarks/gpu_speed.py --device cpu --quick     # smoke test of the script itself

Times come from CUDA events around several steps after warm-up (compilation stays out of them);
tokens/s = batch x tgt_len x steps / seconds. A variant that runs out of memory is reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from einsum_reference import from_model  # noqa: E402

from txl_audio.config import ModelConfig, load_config  # noqa: E402
from txl_audio.model import TransformerXL, compiled_layers  # noqa: E402

RESULTS = HERE / "results" / "gpu_speed.json"


class _Timer:
    """Wall time of a region on the device (CUDA events) or the host clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> _Timer:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def _autocast(device: torch.device, dtype: str):
    enabled = dtype == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def measure(
    model,
    cfg: ModelConfig,
    batch: int,
    device: torch.device,
    dtype: str,
    train: bool,
    warmup: int,
    steps: int,
) -> dict:
    """Tokens/s and peak memory of ``steps`` training (fwd + bwd + fused AdamW) or evaluation
    (forward with memory) steps, memory carried from step to step."""
    g = torch.Generator(device="cpu").manual_seed(0)
    segs = [
        torch.randint(0, cfg.vocab_size, (batch, cfg.tgt_len + 1), generator=g).to(device) for _ in range(4)
    ]
    opt = None
    if train:
        fused = device.type == "cuda"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    model.train(train)
    mems = None
    # in evaluation ours carries the memory's keys and values along, as `txl-audio evaluate` does
    kw = {"keep_kv": True} if not train and isinstance(model, TransformerXL) else {}

    def step(i: int):
        nonlocal mems
        seg = segs[i % len(segs)]
        with torch.set_grad_enabled(train), _autocast(device, dtype):
            out = model(seg[:, :-1], mems=mems, targets=seg[:, 1:], return_logits=False, **kw)
        if train:
            out.loss.float().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        mems = out.mems

    try:
        for i in range(warmup):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with _Timer(device) as t:
            for i in range(steps):
                step(i)
    except torch.OutOfMemoryError:
        return {"oom": True}
    res = {"tokens_per_s": batch * cfg.tgt_len * steps / t.seconds, "seconds": t.seconds, "steps": steps}
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def run_config(
    cfg: ModelConfig,
    name: str,
    batch: int,
    device: torch.device,
    dtype: str,
    compile_: bool,
    warmup: int,
    steps: int,
    on_result=None,
) -> dict:
    """One config's row; ``on_result(row)`` is called after each measurement (to save as it goes)."""
    cfg = dataclasses.replace(cfg, dropout=0.0, dropatt=0.0)
    row: dict = {
        "config": name,
        "n_layer": cfg.n_layer,
        "d_model": cfg.d_model,
        "tgt_len": cfg.tgt_len,
        "mem_len": cfg.mem_len,
        "batch": batch,
        "dtype": dtype,
    }
    torch.manual_seed(0)

    def compiled(mode: str, stack: contextlib.ExitStack):
        model = TransformerXL(cfg).to(device)
        if mode == "train":
            return torch.compile(model)  # as train.py does with train.compile = true
        return stack.enter_context(compiled_layers(model))  # as `txl-audio evaluate --compile` does

    # compiled last: if compilation runs past the script's time limit, the plain ratio is already out
    variants = {
        "ours": lambda mode, stack: TransformerXL(cfg).to(device),
        "einsum": lambda mode, stack: from_model(TransformerXL(cfg)).to(device),
    }
    if compile_:
        variants["ours_compiled"] = compiled
    for mode in ("train", "eval"):
        for vname, make in variants.items():
            with contextlib.ExitStack() as stack:
                model = make(mode, stack)
                t0 = time.perf_counter()
                r = measure(model, cfg, batch, device, dtype, mode == "train", warmup, steps)
            r["wall_s"] = time.perf_counter() - t0
            row[f"{mode}_{vname}"] = r
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  {name} {mode:<5} {vname:<14} {_fmt(r)}", flush=True)
            if on_result is not None:
                on_result(row)
        for vname in variants:
            if vname != "einsum":
                a, b = row[f"{mode}_{vname}"], row[f"{mode}_einsum"]
                if "tokens_per_s" in a and "tokens_per_s" in b:
                    row[f"{mode}_{vname}_vs_einsum"] = a["tokens_per_s"] / b["tokens_per_s"]
    return row


def _fmt(r: dict) -> str:
    if r.get("oom"):
        return "out of memory"
    peak = f", peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""
    return f"{r['tokens_per_s']:,.0f} tokens/s{peak}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["recipes/configs/audio_small.toml", "recipes/configs/audio_base.toml"],
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 4], help="batch per config (last repeats)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny model, CPU-sized (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res = {
        "benchmark": "gpu_speed",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": [],
    }
    for i, path in enumerate(args.configs):
        cfg = load_config(path).model
        batch = args.batch[min(i, len(args.batch) - 1)]
        if args.quick:
            cfg = dataclasses.replace(
                cfg, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16, mem_len=16
            )
            batch, args.warmup, args.steps = 2, 3, 2  # 3 warm-up steps: compiled, recompiled with memory
        print(
            f"{Path(path).stem}: {cfg.n_layer} layers, d_model {cfg.d_model}, tgt_len {cfg.tgt_len}, "
            f"mem_len {cfg.mem_len}, batch {batch}, {args.dtype} on {res['device']}",
            flush=True,
        )
        def save(row: dict, n_done: int = len(res["rows"])) -> None:
            # written after every measurement, so a run cut short keeps what it measured
            res["rows"][n_done:] = [row]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1))

        save(
            run_config(cfg, Path(path).stem, batch, device, args.dtype, args.compile, args.warmup,
                       args.steps, on_result=save)
        )
    print(
        "\n| config | mode | ours tokens/s | einsum tokens/s | ratio | peak GiB (ours / einsum) | device |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        for mode in ("train", "eval"):
            a, b = r[f"{mode}_ours"], r[f"{mode}_einsum"]
            ratio = r.get(f"{mode}_ours_vs_einsum")
            best = r.get(f"{mode}_ours_compiled", {})
            ours = _fmt(a).split(" tokens")[0] + (
                f" ({_fmt(best).split(' tokens')[0]} compiled)" if best else ""
            )
            peaks = f"{a.get('peak_gib', float('nan')):.1f} / {b.get('peak_gib', float('nan')):.1f}"
            print(
                f"| {r['config']} | {mode} | {ours} | {_fmt(b).split(' tokens')[0]} | "
                f"{ratio:.2f}x | {peaks} | {res['device']} |"
                if ratio
                else f"| {r['config']} | {mode} | {ours} | {_fmt(b)} | - | {peaks} | {res['device']} |"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
