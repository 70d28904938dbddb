"""``txl-audio decompress FILE... --out DIR``: .txla files back to 16 kHz mono 16-bit WAVs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help=".txla files or folders holding them")
    p.add_argument("--out", type=Path, required=True, help="folder for the decoded WAVs")
    p.add_argument("--checkpoint", default=None,
                   help="the checkpoint that compressed them (default: the path recorded in each file)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: the kind the files were made on")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: as recorded in the file)")
    p.add_argument("--force", action="store_true",
                   help="decode although torch or the device kind differ from the file's (may fail)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from txl_audio.codec import decompress_files  # torch: see commands/__init__.py

    report = decompress_files(args.files, args.out, checkpoint=args.checkpoint, device=args.device,
                              threads=args.threads, force=args.force, progress=not args.no_progress)
    print(report.summary())
    return 0
