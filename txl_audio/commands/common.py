"""Argument groups and checkpoint loading shared by the commands that run a checkpoint over data
(``evaluate``, ``context``): parsing only; the work is library functions (``checkpoint.load_model``,
``evaluate.load_documents``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_checkpoint_and_data(p: argparse.ArgumentParser) -> None:
    """The checkpoint, the data source (a corpus split or files) and the device."""
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint file, or a run directory (its best.pt or newest)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="a prepared corpus folder (prepare-audio / prepare-text)")
    src.add_argument(
        "--audio",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="audio files or folders, tokenized with the checkpoint's tokenizer "
        "(text files for a text model)",
    )
    p.add_argument("--split", default="test", help="corpus split to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=8, help="files (or stream lanes) per batch (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default) or bf16 autocast (for CUDA; the loss is summed in fp64 either way)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (default 0: torch's choice; 1 is faster on a busy machine)",
    )


def load(args: argparse.Namespace):
    """(model on its device, tokenizer, checkpoint path) from the arguments of
    :func:`add_checkpoint_and_data`."""
    import torch  # see commands/__init__.py

    from txl_audio.checkpoint import load_model, resolve_checkpoint
    from txl_audio.devices import resolve_device

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)
    model, tokenizer, _config = load_model(path, device=resolve_device(args.device))
    return model, tokenizer, path
