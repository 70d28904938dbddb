"""``txl-audio evaluate``: likelihood of held-out data under a checkpoint, beside xz and bzip2."""

from __future__ import annotations

import argparse
from pathlib import Path

LENGTHS_HELP = """\
how the lengths interact: the model reads --tgt-len tokens per forward pass (one segment) and attends to
those plus --mem-len cached hidden states of the tokens before them, so a prediction sees up to
mem_len + tgt_len previous tokens of its file directly (at least mem_len + 1 once the memory has filled),
and up to n_layer x mem_len through the recurrence. Each defaults to the checkpoint's training value and
may differ from it: a relative-position model can use a longer memory at evaluation than in training
(Dai et al. evaluate with much longer memory than they train with). --clamp-len L makes every relative
distance beyond L share the embedding of L (needed when the memory is much longer than any distance seen
in training); --same-length makes every query of a segment attend over the same number of keys. In
per-file mode (default) every file starts from an empty memory, so a memory longer than the longest file
changes nothing. The absolute-position baseline has no memory: it is evaluated with mem_len 0 and a
--tgt-len no longer than its training one."""


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments shared with ``txl-audio context``: checkpoint, data source, device."""
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's layers: worth its start-up (tens of seconds) on a GPU and a "
        "large split; the same result up to float rounding",
    )
    p.add_argument("--mem-len", type=int, default=None, help="memory length (default: the checkpoint's)")
    p.add_argument("--tgt-len", type=int, default=None, help="segment length (default: the checkpoint's)")
    p.add_argument("--clamp-len", type=int, default=None, help="relative distance clamp; -1 = off")
    p.add_argument(
        "--same-length",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every query attends over the same number of keys (default: the checkpoint's)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="evaluate the files in order as one continuous stream cut into --batch-size lanes, "
        "memory carried across segments (attention still stops at file starts); the usual "
        "way for text corpora. Default: each file from an empty memory",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the xz / bzip2 baselines")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap interval over files")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for per_file.csv and summary.json (default: eval_SPLIT beside the checkpoint)",
    )
    p.epilog = LENGTHS_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def load(args: argparse.Namespace):
    """(model on its device, tokenizer, RunConfig, checkpoint path) from the command's arguments."""
    from txl_audio.checkpoint import load_model, resolve_checkpoint
    from txl_audio.devices import resolve_device

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    path = resolve_checkpoint(args.checkpoint)
    model, tokenizer, config = load_model(path, device=device)
    return model, tokenizer, config, path


def documents(args: argparse.Namespace, tokenizer):
    """(docs, names, unit, sample_rate, split label) from --corpus/--split or --audio."""
    from txl_audio.audio import SAMPLE_RATE
    from txl_audio.evaluate import corpus_documents, file_documents

    if args.corpus is not None:
        from txl_audio.data import Corpus

        corpus = Corpus(args.corpus)
        if corpus.tokenizer.to_dict() != tokenizer.to_dict():
            raise ValueError(
                f"corpus {args.corpus} was tokenized with {corpus.tokenizer.to_dict()} but the checkpoint "
                f"uses {tokenizer.to_dict()}; prepare the corpus with the checkpoint's tokenizer"
            )
        docs, names = corpus_documents(corpus, args.split)
        split = args.split
    else:
        docs, names = file_documents(tokenizer, args.audio)
        split = "files"
    sr = SAMPLE_RATE if tokenizer.unit == "sample" else None
    if args.corpus is not None and sr:
        sr = int(corpus.meta.get("sample_rate") or SAMPLE_RATE)
    return docs, names, tokenizer.unit, sr, split


def run(args: argparse.Namespace) -> int:
    from txl_audio.evaluate import evaluate_tokens

    model, tokenizer, _config, path = load(args)
    docs, names, unit, sr, split = documents(args, tokenizer)
    res = evaluate_tokens(
        model,
        docs,
        names,
        unit=unit,
        split=split,
        mem_len=args.mem_len,
        tgt_len=args.tgt_len,
        clamp_len=args.clamp_len,
        same_length=args.same_length,
        batch_size=args.batch_size,
        stream=args.stream,
        dtype=args.dtype,
        baselines=not args.no_baselines,
        sample_rate=sr,
        progress=not args.no_progress,
        compile=args.compile,
    )
    res.ci_seed = args.seed
    res.extra.update(
        checkpoint=str(path),
        source=str(args.corpus) if args.corpus else [str(a) for a in args.audio],
        compiled=args.compile,  # tokens/s then includes the compilation
    )
    out = args.out or path.parent / f"eval_{split}"
    res.write(out)
    print(f"checkpoint {path}")
    print(res.report())
    print(f"wrote {out / 'per_file.csv'} and {out / 'summary.json'}")
    return 0
