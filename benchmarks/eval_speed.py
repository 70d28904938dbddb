"""Evaluation speed: Transformer-XL memory reuse against vanilla sliding-window evaluation.

What is measured (one run, same machine, same model size, random weights, batch 1, fp32, inference mode):

- memory reuse (Transformer-XL): segments of ``--tgt-len`` tokens (128, as the paper evaluates enwik8)
  with a memory of ``L`` cached hidden states, so every prediction attends to at least ``L`` previous
  tokens. Timed in the steady state (memory already full); tokens/s = predicted tokens / time.
- vanilla sliding window (a fixed-context Transformer, Al-Rfou et al. 2018, as in the paper's
  comparison): each prediction is one forward pass over its whole context of ``L`` tokens (absolute
  positions, no memory), of which only the last position's prediction is new. Timed over a few
  predictions (each one is a full forward, so the per-prediction time is exact and extrapolates
  linearly: a whole evaluation costs that time per token).

The paper (Dai et al. 2019, table 9) reports up to 1,874x at an attention length of 3,800 on GPU; this
script measures the same ratio on this machine's CPU for a small model.

    python benchmarks/eval_speed.py [--contexts 512,2048,8192] [--quick]

Prints a table and writes benchmarks/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from txl_audio.config import ModelConfig
from txl_audio.model import TransformerXL

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=256, n_layer=4, d_model=128, n_head=4, d_head=32, d_inner=512, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def _timed(fn, min_seconds: float, min_reps: int, max_reps: int) -> tuple[float, int]:
    """Seconds per call of ``fn`` after one warm-up call: at least ``min_reps`` calls and
    ``min_seconds``, at most ``max_reps``."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or (time.perf_counter() - t0 < min_seconds and reps < max_reps):
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps, reps


@torch.inference_mode()
def memory_reuse_speed(L: int, tgt_len: int, min_seconds: float) -> dict:
    torch.manual_seed(0)
    model = TransformerXL(small_config(tgt_len=tgt_len, mem_len=L)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, tgt_len + 1), generator=g)
    inp, tgt = x[:, :-1], x[:, 1:]
    mems = None
    for _ in range(-(-L // tgt_len)):  # fill the memory: the steady state has L cached positions
        mems = model(inp, mems=mems, targets=tgt, keep_kv=True).mems
    state = {"mems": mems}

    def step() -> None:  # as `txl-audio evaluate`: the memory's keys and values come along with it
        state["mems"] = model(inp, mems=state["mems"], targets=tgt, keep_kv=True).mems

    sec, reps = _timed(step, min_seconds, 3, 1000)
    return {"seconds_per_segment": sec, "segments_timed": reps, "tokens_per_second": tgt_len / sec}


@torch.inference_mode()
def sliding_window_speed(L: int, min_seconds: float, max_predictions: int) -> dict:
    torch.manual_seed(0)
    model = TransformerXL(small_config(tgt_len=L, mem_len=0, attention="absolute")).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, L + 1), generator=g)
    inp = x[:, :-1]
    tgt = torch.full((1, L), -100, dtype=torch.long)
    tgt[0, -1] = x[0, -1]  # only the newest position is a new prediction

    def predict() -> None:
        model(inp, targets=tgt)

    sec, reps = _timed(predict, min_seconds, 2, max_predictions)
    return {"seconds_per_prediction": sec, "predictions_timed": reps, "tokens_per_second": 1 / sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--tgt-len", type=int, default=128)
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each measurement at least this long")
    ap.add_argument("--max-predictions", type=int, default=20, help="cap on timed sliding-window forwards")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: a stable ratio on a shared machine; 0 = torch's default)",
    )
    ap.add_argument("--quick", action="store_true", help="contexts 256,512 and short timings (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = [256, 512] if args.quick else [int(c) for c in args.contexts.split(",")]
    min_s = 0.3 if args.quick else args.min_seconds
    rows = []
    for L in contexts:
        xl = memory_reuse_speed(L, args.tgt_len, min_s)
        van = sliding_window_speed(L, min_s, 3 if args.quick else args.max_predictions)
        rows.append(
            {
                "context": L,
                "memory_reuse": xl,
                "sliding_window": van,
                "speedup": xl["tokens_per_second"] / van["tokens_per_second"],
            }
        )
        print(
            f"context {L:>5}: memory reuse {xl['tokens_per_second']:>10,.0f} tok/s, sliding window "
            f"{van['tokens_per_second']:>8.2f} tok/s, speedup {rows[-1]['speedup']:,.0f}x",
            flush=True,
        )
    cfg = small_config()
    result = {
        "benchmark": "eval_speed",
        "what": "tokens/s of evaluation: Transformer-XL segments with memory of L cached states vs a "
        "fixed-context Transformer re-running a forward over L tokens per prediction",
        "model": {
            k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "vocab_size")
        },
        "tgt_len": args.tgt_len,
        "batch_size": 1,
        "dtype": "fp32",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "paper": "Dai et al. 2019 table 9: up to 1,874x at attention length 3,800 (GPU)",
        "rows": rows,
    }
    print()
    print(f"{'context':>8} | {'memory reuse tok/s':>18} | {'sliding window tok/s':>20} | {'speedup':>8}")
    print(f"{'-' * 8}-+-{'-' * 18}-+-{'-' * 20}-+-{'-' * 8}")
    for r in rows:
        print(
            f"{r['context']:>8} | {r['memory_reuse']['tokens_per_second']:>18,.0f} | "
            f"{r['sliding_window']['tokens_per_second']:>20.2f} | {r['speedup']:>7,.0f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
