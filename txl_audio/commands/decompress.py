"""``txl-audio decompress FILE... --out DIR``: .txla files back to 16 kHz mono 16-bit WAVs."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help=".txla files or folders holding them, or - for stdin")
    p.add_argument("--out", required=True, help="folder for the decoded WAVs, or - for stdout (one file)")
    p.add_argument("--model", "--checkpoint", dest="model", default=None,
                   help="the model that compressed them (default: the shipped model or checkpoint each "
                        "file names)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of one process (default: torch's)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes decoding in parallel on the CPU, one thread each (default: one per core "
                        "for 20 s of audio or more, else 1); the output is the same")
    p.add_argument("--batch-size", type=int, default=None,
                   help="chunks decoded together (default 128 per worker process, 256 in one)")
    p.add_argument("--force", action="store_true",
                   help="version-2 files (before txl-audio's portable codec): decode although torch or the "
                        "device kind differ from the file's (may fail)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from txl_audio.codec import decompress_files  # torch: see commands/__init__.py

    report = decompress_files(args.files, args.out, model=args.model, device=args.device,
                              threads=args.threads, batch=args.batch_size, workers=args.workers,
                              force=args.force, progress=not args.no_progress)
    print(report.summary(), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0
