"""``txl-audio prepare-audio``: audio folders or manifests -> token shards + meta.json."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from txl_audio.prepare import DEFAULT_SPEAKER_REGEX, NORMALIZATIONS, SPLIT_BY, prepare_audio
from txl_audio.tokenizers import AUDIO_TOKENIZERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio folder (searched recursively), audio file, or manifest: .txt with one path "
                        "per line or .csv with a 'path' column and optional 'speaker' and 'split' "
                        "(train/valid/test) columns; relative paths are relative to the manifest")
    p.add_argument("--out", type=Path, required=True,
                   help="corpus folder to write (an existing corpus there is replaced whole at the end)")
    p.add_argument("--tokenizer", default="mulaw8", choices=AUDIO_TOKENIZERS, help="default: mulaw8")
    p.add_argument("--split-by", default="speaker", choices=SPLIT_BY,
                   help="hash the speaker (default; no speaker is in two splits) or each file, or take "
                        "the CSV manifest's split column (manifest: a paper's split, e.g. "
                        "`txl-audio download sc09`)")
    p.add_argument("--valid", type=float, default=0.05, help="fraction of speakers for validation (0.05)")
    p.add_argument("--test", type=float, default=0.05, help="fraction of speakers for test (0.05)")
    p.add_argument("--speaker-regex", default=None,
                   help="regex searched in each file's path relative to its INPUT; group 1 (or the match) is "
                        f"the speaker; files without a match are their own speaker (default: "
                        f"{DEFAULT_SPEAKER_REGEX!r}, Speech Commands' SPEAKER_nohash_N names)")
    p.add_argument("--normalize", default="none", choices=NORMALIZATIONS,
                   help="none (default), or minmax: scale each file's [min, max] onto [-1, 1] before "
                        "tokenizing, as the SaShiMi / Mamba SC09 numbers were measured")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad file (exit 1, nothing written) instead of skipping it")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes (default: CPU cores, at most 8); the output does not "
                        "depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    report = prepare_audio(args.inputs, args.out, tokenizer=args.tokenizer, split_by=args.split_by,
                           valid=args.valid, test=args.test, speaker_regex=args.speaker_regex,
                           strict=args.strict, workers=args.workers, progress=not args.quiet,
                           normalize=args.normalize)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(report.summary())
    return 0
