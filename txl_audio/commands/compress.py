"""``txl-audio compress INPUT... --out DIR``: lossless compression (the shipped speech16 model unless
``--model`` names another)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
What comes back bit for bit: with a 16-bit model (speech16, or one trained on a pcm16 corpus), the exact
int16 samples of each 16 kHz mono 16-bit file (other files are refused unless --convert, and then the
converted samples come back, not the original bytes); with an 8-bit model, the mu-law (or 8-bit linear)
codes of the file, not the waveform they were made from. A .txla decodes on any machine (another CPU,
thread count, or a GPU): the probabilities come from the model in integer arithmetic. Each file becomes
OUT/NAME.txla; `-` reads a WAV from stdin, `--out -` writes the .txla to stdout:

  txl-audio compress speech.wav --out compressed/
  sox in.flac -t wav - | txl-audio compress - --out - > speech.txla"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders, or - for stdin")
    p.add_argument("--model", default=None,
                   help="a shipped model (speech16, the default; speech8) or a checkpoint / run folder")
    p.add_argument("--corpus", type=Path, default=None,
                   help="compress the files of a prepared corpus split instead (see --split)")
    p.add_argument("--split", default="test", help="with --corpus: the split (default test)")
    p.add_argument("--out", required=True, help="folder for the .txla files, or - for stdout (one input)")
    p.add_argument("--convert", action="store_true",
                   help="16-bit model: compress files that need resampling, mixing down or rounding to 16 "
                        "bits (their original bytes will not come back)")
    p.add_argument("--chunk", type=int, default=4096,
                   help="samples per independently decoded chunk (default 4096)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="chunks coded together, across files (default 128 per worker process, 256 in one)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes coding in parallel on the CPU, one thread each (default: one per core "
                        "for 20 s of audio or more, else 1); the files are the same bytes")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of one process (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def old_form(inputs: list[str]) -> tuple[str | None, list[str]]:
    """`compress CKPT INPUT...` (before --model): a first argument that is a checkpoint file or a run
    folder holding checkpoints is taken as the model."""
    if len(inputs) >= 2:
        first = Path(inputs[0])
        if (first.is_file() and first.suffix == ".pt") or (first.is_dir() and (
                (first / "best.pt").is_file() or any(first.glob("ckpt_*.pt")))):
            return inputs[0], inputs[1:]
    return None, inputs


def run(args: argparse.Namespace) -> int:
    from txl_audio.codec import compress_files  # torch: see commands/__init__.py

    model, inputs = args.model, list(args.inputs)
    if model is None:
        model, inputs = old_form(inputs)
    if not inputs and args.corpus is None:
        raise ValueError("give audio files or folders (- for stdin), or --corpus DIR")
    report = compress_files(inputs, args.out, model=model, corpus=args.corpus, split=args.split,
                            convert=args.convert, chunk=args.chunk, batch=args.batch_size, device=args.device,
                            threads=args.threads, workers=args.workers, progress=not args.no_progress)
    print(report.summary(), file=sys.stderr if args.out == "-" else sys.stdout)
    return 0
