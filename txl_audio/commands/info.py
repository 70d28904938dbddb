"""``txl-audio info FILE...``: what each audio file is and what the tokenizer makes of it.

A bad file is reported as one line on stderr (``txl-audio info: error: PATH: problem``); the other
files are still shown and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from txl_audio.audio import SAMPLE_RATE, AudioError, find_audio_files, read_audio
from txl_audio.tokenizers import code_counts, make_tokenizer, unigram_entropy

# |x| at or above this after loading counts as full scale, i.e. (very likely) clipped
FULL_SCALE = 0.999


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files, or folders to search for them")
    parser.add_argument("--tokenizer", default="mulaw8",
                        help="audio tokenizer: mulaw8 (default), mulaw10, mulaw16, linear8, linear16")
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE,
                        help=f"rate the audio is resampled to before tokenizing (default {SAMPLE_RATE})")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")


def describe_file(path: str | Path, tokenizer, sample_rate: int = SAMPLE_RATE) -> tuple[dict, np.ndarray]:
    """The file's header facts and the tokenizer's view of it; also returns the code counts."""
    wave, info = read_audio(path, sample_rate)
    codes = tokenizer.encode(wave)
    counts = code_counts(codes, tokenizer.vocab_size)
    peak = float(np.abs(wave).max())
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    d = info.to_dict()
    d.update(
        tokenizer=tokenizer.to_dict(), token_rate=sample_rate, tokens=int(codes.size),
        entropy_bits=unigram_entropy(counts), codes_used=int(np.count_nonzero(counts)),
        most_common_code=int(np.argmax(counts)), most_common_share=float(counts.max() / codes.size),
        full_scale_share=float(np.mean(np.abs(wave) >= FULL_SCALE)),
        peak_dbfs=_dbfs(peak), rms_dbfs=_dbfs(rms),
    )
    return d, counts


def _dbfs(v: float) -> float:
    return 20 * math.log10(v) if v > 0 else -math.inf


def _name(tok) -> str:
    d = tok.to_dict()
    return f"{d['type']}{d.get('bits', '')}"


def _text(d: dict, tok) -> str:
    ch = "channel" if d["channels"] == 1 else "channels"
    return "\n".join([
        d["path"],
        f"  file       {d['format']} {d['subtype']}, {d['sample_rate']} Hz, {d['channels']} {ch}, "
        f"{d['duration']:.3f} s ({d['frames']} frames)",
        f"  level      peak {d['peak_dbfs']:.1f} dBFS, RMS {d['rms_dbfs']:.1f} dBFS, "
        f"{100 * d['full_scale_share']:.2f}% of samples at full scale (clipped)",
        f"  {_name(tok):<10} {d['tokens']} tokens at {d['token_rate']} Hz; unigram entropy "
        f"{d['entropy_bits']:.2f} bits (of {math.log2(tok.vocab_size):g}); "
        f"{d['codes_used']}/{tok.vocab_size} codes used; "
        f"most common {d['most_common_code']} ({100 * d['most_common_share']:.1f}%)",
    ])


def run(args: argparse.Namespace) -> int:
    tok = make_tokenizer(args.tokenizer)
    if tok.unit != "sample":
        raise ValueError(f"--tokenizer {args.tokenizer!r} is a text tokenizer; use mulaw8, linear16, ...")
    paths: list[Path] = []
    failed = 0
    for name in args.files:
        p = Path(name)
        if p.is_dir():
            found = find_audio_files(p)
            if not found:
                print(f"txl-audio info: error: {p}: no audio files in this folder", file=sys.stderr)
                failed += 1
            paths += found
        else:
            paths.append(p)
    total = np.zeros(tok.vocab_size, dtype=np.int64)
    seconds = 0.0
    n_ok = 0
    for p in paths:
        try:
            d, counts = describe_file(p, tok, args.sample_rate)
        except AudioError as e:
            print(f"txl-audio info: error: {e}", file=sys.stderr)
            failed += 1
            continue
        total += counts
        n_ok += 1
        seconds += d["duration"]
        print(json.dumps(d) if args.json else _text(d, tok), flush=True)
    if n_ok > 1 and not args.json:
        print(f"total: {n_ok} files, {seconds:.1f} s, {int(total.sum())} tokens; unigram entropy of all "
              f"codes {unigram_entropy(total):.2f} bits" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
