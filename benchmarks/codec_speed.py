"""Codec speed: samples/s of `txl-audio compress` and `decompress` (txl_audio/codec.py) by batch size.

A batch of chunks is coded together (one model step per sample for the whole batch), so the
aggregate rate grows with the batch while one stream's rate stays that of a cached decoding step plus
the range coder. Models with random weights (the speed does not depend on what they learned): the
shipped 16-bit model's architecture (recipes/configs/speech16.toml: a logistic mixture on the predictor
cascade) and the 8-bit demo's (tiny_cpu.toml), or any --config. On a GPU it also checks that a file made
on the CPU and one made on the GPU are the same bytes and that each decodes on the other device.

    python benchmarks/codec_speed.py                              # CPU, batch 1 4 16
    python benchmarks/codec_speed.py --models speech16 --batch 236 --chunk 2048 --workers 1 2
    python benchmarks/codec_speed.py --device cuda --batch 1 16 64 \
        --config recipes/configs/sc09_gpu.toml

Prints a table and writes benchmarks/results/codec_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from txl_audio import codec  # noqa: E402
from txl_audio.audio import SAMPLE_RATE  # noqa: E402
from txl_audio.config import load_config  # noqa: E402
from txl_audio.devices import device_name  # noqa: E402
from txl_audio.model import TransformerXL  # noqa: E402
from txl_audio.tokenizers import make_tokenizer  # noqa: E402

CONFIGS = {"speech16": ("recipes/configs/speech16.toml", "pcm16"),
           "tiny_cpu": ("recipes/configs/tiny_cpu.toml", "mulaw8")}


def speech_like(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.003, n)
    return x.astype(np.float32)


def measure(model, tokenizer, batch: int, chunk: int, device: torch.device, workers: int = 1) -> dict:
    tokens = np.asarray(tokenizer.encode(speech_like(batch * chunk))).astype(np.int64)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cm = codec.coding_model(model, tokenizer)
        r = codec.compress_tokens(cm, tokens, Path(d) / "x.txla", chunk=chunk, batch=batch, workers=workers)
        t1 = time.perf_counter()
        back = codec.decompress_tokens(cm, r.path, batch=batch, workers=workers)
        t2 = time.perf_counter()
        assert np.array_equal(back, tokens)
        cross = None
        if device.type != "cpu":  # the same bytes from the CPU, and each device decodes the other's file
            cpu = codec.coding_model(copy.deepcopy(model).cpu(), tokenizer)
            c_cpu = codec.compress_tokens(cpu, tokens, Path(d) / "cpu.txla", chunk=chunk, batch=batch)
            cross = (c_cpu.path.read_bytes() == r.path.read_bytes()
                     and np.array_equal(codec.decompress_tokens(cm, c_cpu.path, batch=batch), tokens)
                     and np.array_equal(codec.decompress_tokens(cpu, r.path, batch=batch), tokens))
            assert cross, "the CPU's and the GPU's files differ, or one does not decode on the other device"
    n = len(tokens)
    c, d = n / (t1 - t0), n / (t2 - t1)
    return {"batch": batch, "chunk": chunk, "workers": workers, "samples": n,
            "bits_per_sample": r.bits_per_sample,
            "compress_samples_per_s": c, "decompress_samples_per_s": d,
            "compress_realtime": c / SAMPLE_RATE, "decompress_realtime": d / SAMPLE_RATE,
            "cpu_gpu_files_identical": cross}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--chunk", type=int, default=1024,
                    help="samples per chunk (each batch codes batch x chunk)")
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--config", action="append", default=[], help="also a recipe TOML (16-bit: pcm16 tokens)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as compress uses)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="worker processes, each a share of the batch's groups (CPU; default 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_speed.json"))
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each row this many times in one process: the first includes the one-time "
                         "start-up (numba's, ~0.5 s), the row reports the fastest and keeps the first")
    ap.add_argument("--quick", action="store_true", help="batch 1 and 4 of 256-sample chunks: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.chunk = [1, 4], 256
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = [(name, ROOT / path, tok) for name, (path, tok) in CONFIGS.items() if name in args.models]
    for path in args.config:
        cfg = load_config(path).model
        runs.append((Path(path).stem, Path(path), "pcm16" if cfg.vocab_size == 65_536 else "mulaw8"))
    rows = []
    info = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", *sys.argv]), "rows": rows}
    for name, path, tok in runs:
        cfg = load_config(path, ["model.dropout=0.0"]).model
        torch.manual_seed(0)
        model = TransformerXL(cfg).to(device).eval()
        tokenizer = make_tokenizer(tok)
        for b, w in ((b, w) for b in args.batch for w in args.workers):
            runs = [measure(model, tokenizer, b, args.chunk, device, w) for _ in range(max(1, args.repeat))]
            best = max(runs, key=lambda r: r["compress_samples_per_s"] + r["decompress_samples_per_s"])
            row = {"model": name, "head": cfg.head, **best,
                   "first_compress_samples_per_s": runs[0]["compress_samples_per_s"],
                   "first_decompress_samples_per_s": runs[0]["decompress_samples_per_s"], "repeat": len(runs)}
            rows.append(row)
            print(f"{name:>16} batch {b:3d} workers {w}: compress {row['compress_samples_per_s']:9,.0f}/s "
                  f"({row['compress_realtime']:.3f}x real time), decompress "
                  f"{row['decompress_samples_per_s']:9,.0f}/s ({row['decompress_realtime']:.3f}x)",
                  flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(info, indent=2) + "\n")  # after every row
    print()
    print(table(info))
    return 0


def table(info: dict) -> str:
    lines = [f"codec speed on {info['device']}, torch {info['torch']}, {info['threads']} thread(s)",
             "| model | head | batch | workers | compress samples/s | x real time | decompress samples/s "
             "| x real time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in info["rows"]:
        lines.append(f"| {r['model']} | {r['head']} | {r['batch']} | {r.get('workers', 1)} | "
                     f"{r['compress_samples_per_s']:,.0f} | "
                     f"{r['compress_realtime']:.3f} | {r['decompress_samples_per_s']:,.0f} | "
                     f"{r['decompress_realtime']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
