"""The codec's table: real compressed size beside the model's own code length and the classical
compressors, on the same samples of a prepared corpus split, with compress and decompress speed.

For each file of the split (or the first ``--files``): ``txl_audio.codec.compress_tokens`` writes a
.txla file (headers included in its size), ``decompress_tokens`` decodes it and the result must equal
the input bit for bit (else the script stops). On exactly the same tokens:

- 16-bit model: FLAC -8 (no padding, no seek table), WavPack's highest mode (``wavpack -hh -x6``; a
  column only where Debian's ``wavpack`` is installed), xz -9e and bzip2 -9 on the raw int16 bytes;
- 8-bit model: xz -9e and bzip2 -9 on the code bytes, and FLAC -8 on the codes as 8-bit PCM.

Every column counts the whole file (all samples: the codec stores the first one too), in bits per
sample; speeds are samples/s and x real time on this machine with ``--threads``.

    python benchmarks/codec_table.py CKPT --corpus DIR [--split test] [--files 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from txl_audio.audio import SAMPLE_RATE  # noqa: E402
from txl_audio.baselines import flac_bytes, pcm16_samples  # noqa: E402
from txl_audio.checkpoint import load_model, resolve_checkpoint  # noqa: E402
from txl_audio.codec import (  # noqa: E402
    SUFFIX,
    compress_tokens,
    decompress_tokens,
    read_container,
    sixteen_bit,
)
from txl_audio.evaluate import evaluate_tokens, load_documents  # noqa: E402


def wavpack_bytes(samples: np.ndarray) -> int | None:
    """Size of ``samples`` (int16) as WavPack at its highest compression (-hh -x6), or None without the
    ``wavpack`` command."""
    exe = shutil.which("wavpack")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        wav, wv = Path(d) / "x.wav", Path(d) / "x.wv"
        sf.write(wav, samples.astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
        subprocess.run([exe, "-hh", "-x6", "-q", "-y", str(wav), "-o", str(wv)], check=True,
                       capture_output=True)
        return wv.stat().st_size


def raw_bytes(tokens: np.ndarray, sixteen: bool) -> bytes:
    if sixteen:
        return np.ascontiguousarray(pcm16_samples(tokens), dtype="<i2").tobytes()
    return np.ascontiguousarray(tokens, dtype=np.uint8).tobytes()


def baselines(tokens: np.ndarray, sixteen: bool) -> dict[str, int]:
    """Bytes of each classical compressor on exactly these tokens."""
    raw = raw_bytes(tokens, sixteen)
    out = {"xz -9e": len(lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)),
           "bzip2 -9": len(bz2.compress(raw, compresslevel=9))}
    if sixteen:
        x = pcm16_samples(tokens)
        out["FLAC -8"] = flac_bytes(x)
        wv = wavpack_bytes(x)
        if wv is not None:
            out["WavPack -hh -x6"] = wv
    else:  # the codes as 8-bit PCM (FLAC sees the zero low byte as wasted bits)
        codes = ((tokens.astype(np.int64) - 128) * 256).astype(np.int16)
        out["FLAC -8 (codes as 8-bit PCM)"] = flac_bytes(codes)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--corpus", required=True, help="a prepared corpus (the checkpoint's tokenizer)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--files", type=int, default=0, help="only the split's first N files (0 = all)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for the .txla files (default: temporary)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here too")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    model, tokenizer, _ = load_model(ckpt, torch.device("cpu"))
    sixteen = sixteen_bit(model)
    d = load_documents(tokenizer, args.corpus, args.split)
    docs = list(zip(d.names, d.docs))
    n_split = len(docs)
    if args.files:
        docs = docs[: args.files]
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)

    samples = sum(len(t) for _, t in docs)
    totals = {"file": 0, "payload": 0, "model": 0.0}
    base: dict[str, int] = {}
    t_comp = t_dec = 0.0
    for i, (name, tokens) in enumerate(docs):
        path = out / f"{i:05d}{SUFFIX}"
        t0 = time.perf_counter()
        r = compress_tokens(model, tokenizer, tokens, path, chunk=args.chunk, batch=args.batch)
        t1 = time.perf_counter()
        _, back = decompress_tokens(model, path)
        t2 = time.perf_counter()
        if not np.array_equal(back, tokens):
            raise SystemExit(f"{name}: the round trip changed the samples")
        t_comp += t1 - t0
        t_dec += t2 - t1
        totals["file"] += 8 * r.bytes
        totals["payload"] += 8 * len(read_container(path)[1])
        totals["model"] += r.model_bits
        for k, v in baselines(tokens, sixteen).items():
            base[k] = base.get(k, 0) + 8 * v
        print(f"\r{i + 1}/{len(docs)} files", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    # the model's NLL of each file in one piece (txl-audio evaluate: segments with memory, no chunk
    # starts; its first sample is not predicted): the difference to the code length is what the
    # chunk starts cost
    ev = evaluate_tokens(model, [t for _, t in docs], [n for n, _ in docs], baselines=False, progress=False)
    whole = ev.nll_nats / np.log(2) / samples
    unit = "bits per 16-bit sample" if sixteen else "bits per sample (8-bit codes)"
    res = {
        "checkpoint": str(ckpt), "corpus": str(args.corpus), "split": args.split, "files": len(docs),
        "files_in_split": n_split, "samples": samples, "sixteen_bit": sixteen, "unit": unit,
        "chunk": args.chunk, "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "txla_bits_per_sample": totals["file"] / samples,
        "payload_bits_per_sample": totals["payload"] / samples,
        "model_bits_per_sample": totals["model"] / samples,
        "model_whole_file_bits_per_sample": whole,
        "baselines_bits_per_sample": {k: v / samples for k, v in base.items()},
        "compress_samples_per_s": samples / t_comp, "decompress_samples_per_s": samples / t_dec,
    }
    files = f"{len(docs)} of {n_split} files" if len(docs) < n_split else f"all {n_split} files"
    print(f"{args.split} split of {args.corpus}, {files}, {samples:,} samples; {unit}; round trips bit-exact")
    print(f"| .txla files | their payload (headers excluded) | model's code length of the {args.chunk}-"
          "sample chunks | model's NLL, files in one piece | "
          + " | ".join(res["baselines_bits_per_sample"]) + " |")
    print("|---" * (4 + len(base)) + "|")
    print(f"| **{res['txla_bits_per_sample']:.4f}** | {res['payload_bits_per_sample']:.4f} "
          f"| {res['model_bits_per_sample']:.4f} | {whole:.4f} | "
          + " | ".join(f"{v:.4f}" for v in res["baselines_bits_per_sample"].values()) + " |")
    for what in ("compress", "decompress"):
        rate = res[f"{what}_samples_per_s"]
        print(f"{what}: {rate:,.0f} samples/s = {rate / SAMPLE_RATE:.3f}x real time "
              f"({args.threads} CPU threads, chunk {args.chunk}, batch {args.batch})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
