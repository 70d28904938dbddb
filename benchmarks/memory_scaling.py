"""Peak memory of one training step and one evaluation step against mem_len, at fixed tgt_len.

Transformer-XL's memory is detached, so a training step keeps activations for the tgt_len queries
attending over mem_len + tgt_len keys: the attention scores are (B, H, T, M + T), linear in M. This
measures it and fits the exponent of peak memory against mem_len (1 = linear, 2 = quadratic).

On CUDA it reads torch.cuda.max_memory_allocated; on CPU each point runs in a fresh subprocess and
reports the growth of the peak resident set (ru_maxrss) over the process's state after the model is
built, so the points do not see each other's allocations.

    python benchmarks/memory_scaling.py [--device cuda] [--mem-lens 0,512,1024,2048,4096,8192]
    python benchmarks/memory_scaling.py --attention rotary   # the rotary-position model (issue 18)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "memory_scaling.json"


def _model(mem_len: int, tgt_len: int, device: str, attention: str = "relative"):
    import torch

    from txl_audio.config import ModelConfig
    from txl_audio.model import TransformerXL

    cfg = ModelConfig(
        vocab_size=256, n_layer=4, d_model=256, n_head=4, d_head=64, d_inner=1024,
        dropout=0.0, tgt_len=tgt_len, mem_len=mem_len, attention=attention,
    )
    torch.manual_seed(0)
    return TransformerXL(cfg).to(device), cfg


def measure_point(mem_len: int, tgt_len: int, batch: int, mode: str, device: str,
                  attention: str = "relative") -> float:
    """Peak bytes of one step of ``mode`` ('train' or 'eval') beyond what the model itself holds."""
    import torch

    from txl_audio.model import LayerMemory, Memory

    model, cfg = _model(mem_len, tgt_len, device, attention)
    tokens = torch.randint(0, 256, (batch, tgt_len), device=device)
    mems = None
    if mem_len:
        with torch.no_grad():  # a memory as full as it gets in steady state
            shape = (batch, mem_len, cfg.d_model)
            mems = Memory(tuple(LayerMemory(torch.randn(shape, device=device)) for _ in range(cfg.n_layer)))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode == "train":
        out = model(tokens, mems=mems, targets=tokens, return_logits=False)
        out.loss.mean().backward()
    else:
        with torch.inference_mode():
            model(tokens, mems=mems, targets=tokens, return_logits=False)
    if device == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def _point_in_subprocess(mem_len: int, tgt_len: int, batch: int, mode: str, attention: str) -> float:
    here = str(Path(__file__).parent)
    code = (
        f"import sys, torch; torch.set_num_threads(2); sys.path.insert(0, {here!r});"
        "from memory_scaling import measure_point;"
        f"print(measure_point({mem_len}, {tgt_len}, {batch}, {mode!r}, 'cpu', {attention!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x) over the points with x > 0."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def run(mem_lens: list[int], tgt_len: int, batch: int, device: str, out: Path | None,
        attention: str = "relative") -> dict:
    """Every point, the JSON written after each (a run cut short by a time limit keeps what it measured)."""
    import torch

    rows: list[dict] = []
    res = _result(rows, tgt_len, batch, device, attention)
    for mode in ("train", "eval"):
        for m in mem_lens:
            if device == "cuda":
                peak = measure_point(m, tgt_len, batch, mode, device, attention)
                torch.cuda.empty_cache()
            else:
                peak = _point_in_subprocess(m, tgt_len, batch, mode, attention)
            rows.append({"mode": mode, "mem_len": m, "peak_mib": peak / 2**20})
            res = _result(rows, tgt_len, batch, device, attention)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(res, indent=1))
    return res


def _result(rows: list[dict], tgt_len: int, batch: int, device: str, attention: str = "relative") -> dict:
    import torch

    res = {
        "benchmark": "memory_scaling",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": "n_layer 4, d_model 256, 4 heads, d_inner 1024, fp32"
                 + ("" if attention == "relative" else f", {attention} attention"),
        "attention": attention,
        "tgt_len": tgt_len,
        "batch": batch,
        "rows": rows,
        # growth of the step's memory beyond the mem_len = 0 step, against mem_len
        "exponent": {},
    }
    for mode in ("train", "eval"):
        pts = [r for r in rows if r["mode"] == mode]
        base = next((r["peak_mib"] for r in pts if r["mem_len"] == 0), 0.0)
        xs = [r["mem_len"] for r in pts if r["mem_len"] > 0]
        ys = [max(r["peak_mib"] - base, 1e-6) for r in pts if r["mem_len"] > 0]
        res["exponent"][mode] = fit_exponent(xs, ys) if len(xs) >= 2 else float("nan")
    return res


def print_table(res: dict) -> None:
    print(
        f"peak memory of one step vs mem_len (tgt_len {res['tgt_len']}, batch {res['batch']}, "
        f"{res['device']})"
    )
    print(f"{'mode':<6} {'mem_len':>8} {'peak MiB':>10}")
    for r in res["rows"]:
        print(f"{r['mode']:<6} {r['mem_len']:>8} {r['peak_mib']:>10.1f}")
    for mode, e in res["exponent"].items():
        print(f"{mode}: peak growth ~ mem_len^{e:.2f} (1 = linear, 2 = quadratic)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mem-lens", default="0,512,1024,2048,4096,8192")
    ap.add_argument("--tgt-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds (smoke test)")
    ap.add_argument("--attention", default="relative", choices=["relative", "rotary"])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default benchmarks/results/memory_scaling[_rotary].json)")
    args = ap.parse_args(argv)
    mem_lens = [int(x) for x in args.mem_lens.split(",")]
    tgt_len, batch = args.tgt_len, args.batch
    if args.quick:
        mem_lens, tgt_len, batch = [0, 64, 128, 256], 64, 1
    out = args.out or (RESULTS if args.attention == "relative"
                       else RESULTS.with_name("memory_scaling_rotary.json"))
    print_table(run(mem_lens, tgt_len, batch, args.device, out, args.attention))


if __name__ == "__main__":
    main()
