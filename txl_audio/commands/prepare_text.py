"""``txl-audio prepare-text``: a text corpus -> token shards + meta.json (same layout as audio)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from txl_audio.prepare import TEXT_FORMATS, prepare_text


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.9,0.05,0.05, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (train,valid,test), got {text!r}")
    return parts  # type: ignore[return-value]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", type=Path, default=None, metavar="INPUT",
                   help="a folder with NAME.{train,valid,test}.{txt,tokens} (PTB, WikiText), or one text "
                        "file to cut into splits")
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    p.add_argument("--format", required=True, choices=TEXT_FORMATS,
                   help="words: whitespace tokens + <eos> per line, vocabulary from train; bytes: UTF-8 "
                        "bytes; enwik8 / text8: one file, 90M/5M/5M bytes / characters (proportional "
                        "90%%/5%%/5%% when the file is smaller)")
    p.add_argument("--train", type=Path, help="training text file (instead of INPUT)")
    p.add_argument("--valid", type=Path, help="validation text file")
    p.add_argument("--test", type=Path, help="test text file")
    p.add_argument("--split-fractions", type=_fractions, default=(0.9, 0.05, 0.05), metavar="TR,VA,TE",
                   help="how a single INPUT file is cut for words (by lines) and bytes (by bytes); "
                        "default 0.9,0.05,0.05; nanoGPT's tiny Shakespeare split is 0.9,0.1,0")
    p.add_argument("--min-count", type=int, default=1, help="words: keep words seen this often in train")
    p.add_argument("--max-vocab", type=int, default=None, help="words: vocabulary size cap (with specials)")


def run(args: argparse.Namespace) -> int:
    report = prepare_text(args.out, format=args.format, input=args.input, train=args.train,
                          valid=args.valid, test=args.test, split_fractions=args.split_fractions,
                          min_count=args.min_count, max_vocab=args.max_vocab)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(report.summary())
    return 0
