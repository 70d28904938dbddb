"""``txl-audio compress CKPT INPUT... --out DIR``: lossless compression with a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
What comes back bit for bit: with a 16-bit model (trained on a pcm16 corpus), the exact int16 samples
of each 16 kHz mono 16-bit file (other files are refused unless --convert, and then the converted
samples come back, not the original bytes); with an 8-bit model, the mu-law (or 8-bit linear) codes of
the file, not the waveform they were made from. `txl-audio decompress` needs the same checkpoint, the
same torch version and the same kind of device (the file records them). Each file becomes
OUT/NAME.txla."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or a run directory (its best.pt, else newest ckpt)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders")
    p.add_argument("--corpus", type=Path, default=None,
                   help="compress the files of a prepared corpus split instead (see --split)")
    p.add_argument("--split", default="test", help="with --corpus: the split (default test)")
    p.add_argument("--out", type=Path, required=True, help="folder for the .txla files")
    p.add_argument("--convert", action="store_true",
                   help="16-bit model: compress files that need resampling, mixing down or rounding to 16 "
                        "bits (their original bytes will not come back)")
    p.add_argument("--chunk", type=int, default=4096, help="samples per independently decoded chunk (4096)")
    p.add_argument("--batch-size", type=int, default=16, help="chunks coded together (default 16)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: decompress on the same kind")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; recorded in the file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from txl_audio.codec import compress_files  # torch: see commands/__init__.py

    if not args.inputs and args.corpus is None:
        raise ValueError("give audio files or folders, or --corpus DIR")
    report = compress_files(args.checkpoint, args.inputs, args.out, corpus=args.corpus, split=args.split,
                            convert=args.convert, chunk=args.chunk, batch=args.batch_size, device=args.device,
                            threads=args.threads, progress=not args.no_progress)
    print(report.summary())
    return 0
