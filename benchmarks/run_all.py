"""Run every CPU benchmark in turn and print one table of ratios against their in-run baselines.

    python benchmarks/run_all.py [--quick] [--only model_speed eval_speed ...]

Each benchmark is a script of its own that writes benchmarks/results/NAME.json; this runs them one
after another (never two at once: they would time each other) and reads those files back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> extra arguments for a quick smoke run
BENCHMARKS: dict[str, list[str]] = {
    "model_speed": ["--quick"],
    "eval_speed": ["--quick"],
    "generate_speed": ["--models", "small", "issue3", "issue3_dual", "issue3_mixture", "--steps", "20",
                       "--ref-steps", "3", "--min-seconds", "0.2"],
    "prepare_speed": ["--repeats", "1"],
    "memory_scaling": ["--quick"],
    "codec_speed": ["--quick"],
    "rotary_speed": ["--quick"],
    "cmem_speed": ["--quick"],
}
# benchmarks that are a mode of another script: name -> (script, its arguments)
SCRIPTS: dict[str, tuple[str, list[str]]] = {"rotary_speed": ("model_speed", ["--rotary"]),
                                             "cmem_speed": ("model_speed", ["--cmem"])}
# the full runs' arguments where a script's own defaults are not the measurement
FULL: dict[str, list[str]] = {
    "generate_speed": ["--models", "small", "issue3", "issue3_dual", "issue3_mixture"],
}


def _rows_model_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    rows = [
        ("model: training tokens/s vs einsum", d["train"]["ratio"], 2.0),
        ("model: evaluation tokens/s vs einsum", d["eval"]["ratio"], 3.0),
    ]
    for key in ("decode_b1", "decode_b16"):
        if key in d:
            b = key.split("_b")[1]
            rows.append((f"model: cached decoding vs feeding memories, batch {b}", d[key]["ratio"], 10.0))
    return rows


def _rows_eval_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    return [
        (f"eval: memory reuse vs sliding window, context {r['context']}", r["speedup"], None)
        for r in d["rows"]
    ]


def _rows_generate_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    rows = [
        (f"generate: cached vs reference, {r['model']} batch {r['batch']}", r["speedup"], 10.0)
        for r in d["rows"]
        if r.get("speedup")
    ]
    # a 16-bit head's cached step against the 8-bit softmax's (issue 16: at most 1.25, a ceiling)
    rows += [
        (f"generate: {r['head']} step time vs softmax, issue3 batch {r['batch']}", r["head_cost"], "<= 1.25")
        for r in d["rows"]
        if r.get("head_cost")
    ]
    return rows


def _rows_prepare_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    runs = {r["workers"]: r for r in d["runs"]}
    best = max(runs)
    return [
        (
            f"prepare: {best} workers vs 1 ({runs[best]['seconds']:.1f} s for {runs[best]['files']} files)",
            d["speedup"],
            None,
        )
    ]


def _rows_codec_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in d["rows"]):
        by = {r["batch"]: r for r in d["rows"] if r["model"] == model}
        lo, hi = min(by), max(by)
        if hi > lo:
            rows.append((f"codec: decompress batch {hi} vs {lo}, {model}",
                         by[hi]["decompress_samples_per_s"] / by[lo]["decompress_samples_per_s"], None))
        rows.append((f"codec: x real time decompressing, {model} batch {hi}",
                     by[hi]["decompress_realtime"], None))
    return rows


def _rows_rotary_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    # issue 18's goal: evaluation at mem_len 8,192 at least 1.5x the relative model's tokens/s on CPU
    return [(f"rotary vs relative attention: {r['mode']} tokens/s, mem_len {r['mem_len']}", r["ratio"],
             1.5 if (r["mode"], r["mem_len"]) == ("eval", 8192) else None) for r in d["rows"]]


def _rows_cmem_speed(d: dict) -> list[tuple[str, float, float | str | None]]:
    return [(f"compressive (mem M/2 + M/2 slots x{k[-1]}) vs Transformer-XL mem M: {r['mode']} tokens/s, "
             f"M {r['mem_len']}", r[f"ratio_{k}"], None) for r in d["rows"] for k in ("cmem4", "cmem8")]


def _rows_memory_scaling(d: dict) -> list[tuple[str, float, float | str | None]]:
    return [
        (f"memory: exponent of peak growth in mem_len, {m} (1 = linear)", e, None)
        for m, e in d["exponent"].items()
    ]


EXTRACT = {
    "model_speed": _rows_model_speed,
    "eval_speed": _rows_eval_speed,
    "generate_speed": _rows_generate_speed,
    "prepare_speed": _rows_prepare_speed,
    "memory_scaling": _rows_memory_scaling,
    "codec_speed": _rows_codec_speed,
    "rotary_speed": _rows_rotary_speed,
    "cmem_speed": _rows_cmem_speed,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the scripts run, not the speed")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = ap.parse_args(argv)

    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "rows": [],
        "failed": [],
    }
    shared = HERE.parent.parent / "shared" / "data" / "audio" / "speech_commands_v002_test"
    for name in args.only:
        if name == "prepare_speed" and not shared.is_dir():
            print(f"-- skipping prepare_speed: {shared} not found", flush=True)
            continue
        out = RESULTS / f"{name}.json"
        script, extra = SCRIPTS.get(name, (name, []))
        cmd = [sys.executable, str(HERE / f"{script}.py"), *extra]
        if name == "generate_speed":
            cmd += ["--json", str(out)]
        else:
            cmd += ["--out", str(out)]
        cmd += BENCHMARKS[name] if args.quick else FULL.get(name, [])
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            summary["failed"].append(name)
            print(f"!! {name} failed (exit {proc.returncode})", flush=True)
            continue
        for label, ratio, target in EXTRACT[name](json.loads(out.read_text())):
            summary["rows"].append(
                {
                    "benchmark": name,
                    "what": label,
                    "value": ratio,
                    "target": target,
                    "seconds": round(took, 1),
                }
            )

    print()
    print(
        f"txl_audio benchmarks: {summary['machine']}, {summary['cpus']} CPUs, torch {summary['torch']},"
        f" {summary['date']}{' (quick: sizes too small to mean anything)' if args.quick else ''}"
    )
    width = max((len(r["what"]) for r in summary["rows"]), default=10)
    print(f"{'what':<{width}}  {'ratio':>8}  {'target':>7}")
    for r in summary["rows"]:
        target = r["target"] if isinstance(r["target"], str) else f">= {r['target']:g}" if r["target"] else ""
        print(f"{r['what']:<{width}}  {r['value']:>8.2f}  {target:>7}")
    if summary["failed"]:
        print("failed:", ", ".join(summary["failed"]))
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
