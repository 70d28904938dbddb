"""``txl-audio context``: how the likelihood improves with context (attention span, position in file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from txl_audio.commands.common import add_checkpoint_and_data, load

HELP = """\
Each file is evaluated from an empty memory at each --mem-lens value (a prediction then attends to up to
mem_len + tgt_len previous tokens of its file); the loss is also split by the position of the predicted
token in its file (0-10 ms, 10-30 ms, ... for audio). Memory lengths past the longest file are not
evaluated (they change nothing). A model trained with mem_len 0 is evaluated at every memory length (does
it use memory it never saw?); the absolute-position baseline has no memory and is evaluated at its own
context once, drawn as one point with a flat dashed line. --compare adds checkpoints to the same plots.
The effective context is the shortest evaluated span beyond which no longer span lowers the loss by 1%
of the loss (in the spirit of the paper's RECL)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_and_data(p)
    p.add_argument(
        "--mem-lens",
        default="0,256,1024,4096",
        help="comma-separated memory lengths to evaluate (default 0,256,1024,4096)",
    )
    p.add_argument("--tgt-len", type=int, default=None, help="segment length (default: each checkpoint's)")
    p.add_argument("--cmem-len", type=int, default=None,
                   help="compressed memory slots of compressive checkpoints (default: each one's; 0 = off)")
    p.add_argument(
        "--clamp-len",
        type=int,
        default=None,
        help="relative distance clamp for the longer memories (default: each checkpoint's; -1 = off)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more checkpoints (same tokenizer) evaluated on the same data and drawn on the same plots",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for context_span.csv, context_position.csv, summary.txt and PNG plots",
    )
    p.epilog = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from txl_audio.context import (  # torch: see commands/__init__.py
        analyse_context,
        summary_text,
        write_context,
    )
    from txl_audio.evaluate import load_documents

    try:
        mem_lens = [int(x) for x in args.mem_lens.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--mem-lens must be comma-separated integers, got {args.mem_lens!r}") from None
    if not mem_lens or min(mem_lens) < 0:
        raise ValueError(f"--mem-lens needs non-negative integers, got {args.mem_lens!r}")
    curves = []
    d = first_tok = None
    for ckpt in [args.checkpoint, *args.compare]:
        args.checkpoint = ckpt
        model, tokenizer, path = load(args)
        if first_tok is None:
            first_tok = tokenizer.to_dict()
            d = load_documents(tokenizer, args.corpus, args.split, args.audio)
        elif tokenizer.to_dict() != first_tok:
            raise ValueError(
                f"{path}: its tokenizer {tokenizer.to_dict()} differs from the first checkpoint's "
                f"{first_tok}; --compare needs checkpoints of the same tokenizer"
            )
        curves.append(
            analyse_context(
                model,
                d.docs,
                d.names,
                name=str(ckpt),
                mem_lens=mem_lens,
                tgt_len=args.tgt_len,
                clamp_len=args.clamp_len,
                sample_rate=d.sample_rate,
                unit=d.unit,
                batch_size=args.batch_size,
                dtype=args.dtype,
                progress=not args.no_progress,
                cmem_len=args.cmem_len,
            )
        )
        del model
    levels = tokenizer.vocab_size
    paths = write_context(curves, args.out, unit=d.unit, sample_rate=d.sample_rate, levels=levels)
    print(summary_text(curves, d.unit, d.sample_rate, levels))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
