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

from txl_audio.audio import SAMPLE_RATE, AudioError, describe_audio, find_audio_files
from txl_audio.tokenizers import AUDIO_TOKENIZERS, make_tokenizer, unigram_entropy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files, or folders to search for them")
    parser.add_argument("--tokenizer", default="mulaw8", choices=AUDIO_TOKENIZERS, help="default: mulaw8")
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE,
                        help=f"rate the audio is resampled to before tokenizing (default {SAMPLE_RATE})")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")


def _text(d: dict, name: str, vocab_size: int) -> str:
    ch = "channel" if d["channels"] == 1 else "channels"
    return "\n".join([
        d["path"],
        f"  file       {d['format']} {d['subtype']}, {d['sample_rate']} Hz, {d['channels']} {ch}, "
        f"{d['duration']:.3f} s ({d['frames']} frames)",
        f"  level      peak {d['peak_dbfs']:.1f} dBFS, RMS {d['rms_dbfs']:.1f} dBFS, "
        f"{100 * d['full_scale_share']:.2f}% of samples at full scale (clipped)",
        f"  {name:<10} {d['tokens']} tokens at {d['token_rate']} Hz; unigram entropy "
        f"{d['entropy_bits']:.2f} bits (of {math.log2(vocab_size):g}); "
        f"{d['codes_used']}/{vocab_size} codes used; "
        f"most common {d['most_common_code']} ({100 * d['most_common_share']:.1f}%)",
    ])


def run(args: argparse.Namespace) -> int:
    tok = make_tokenizer(args.tokenizer)
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
            d, counts = describe_audio(p, tok, args.sample_rate)
        except AudioError as e:
            print(f"txl-audio info: error: {e}", file=sys.stderr)
            failed += 1
            continue
        total += counts
        n_ok += 1
        seconds += d["duration"]
        print(json.dumps(d) if args.json else _text(d, args.tokenizer, tok.vocab_size), flush=True)
    if n_ok > 1 and not args.json:
        print(f"total: {n_ok} files, {seconds:.1f} s, {int(total.sum())} tokens; unigram entropy of all "
              f"codes {unigram_entropy(total):.2f} bits" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
