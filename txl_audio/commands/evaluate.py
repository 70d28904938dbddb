"""``txl-audio evaluate``: likelihood of held-out data under a checkpoint, beside xz and bzip2."""

from __future__ import annotations

import argparse
from pathlib import Path

from txl_audio.commands.common import add_checkpoint_and_data, load

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_and_data(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's layers: worth its start-up (tens of seconds) on a GPU and a "
        "large split; the same result up to float rounding",
    )
    p.add_argument("--mem-len", type=int, default=None, help="memory length (default: the checkpoint's)")
    p.add_argument("--tgt-len", type=int, default=None, help="segment length (default: the checkpoint's)")
    p.add_argument("--clamp-len", type=int, default=None, help="relative distance clamp; -1 = off")
    p.add_argument("--cmem-len", type=int, default=None,
                   help="compressed memory slots of a compressive model (default: the checkpoint's; 0 = off)")
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


def run(args: argparse.Namespace) -> int:
    from txl_audio.evaluate import evaluate_tokens, load_documents  # torch: see commands/__init__.py

    model, tokenizer, path = load(args)
    d = load_documents(tokenizer, args.corpus, args.split, args.audio)
    res = evaluate_tokens(
        model,
        d.docs,
        d.names,
        unit=d.unit,
        split=d.split,
        mem_len=args.mem_len,
        tgt_len=args.tgt_len,
        clamp_len=args.clamp_len,
        same_length=args.same_length,
        cmem_len=args.cmem_len,
        batch_size=args.batch_size,
        stream=args.stream,
        dtype=args.dtype,
        baselines=not args.no_baselines,
        sample_rate=d.sample_rate,
        progress=not args.no_progress,
        compile=args.compile,
    )
    res.ci_seed = args.seed
    res.extra.update(
        checkpoint=str(path),
        source=str(args.corpus) if args.corpus else [str(a) for a in args.audio],
        compiled=args.compile,  # tokens/s then includes the compilation
    )
    # beside the checkpoint, except for a shipped model (never write into the package): runs/NAME/
    from txl_audio.models import FOLDER

    home = Path("runs") / path.stem if path.parent == FOLDER else path.parent
    out = args.out or home / f"eval_{d.split}"
    res.write(out)
    print(f"checkpoint {path}")
    print(res.report())
    print(f"wrote {out / 'per_file.csv'} and {out / 'summary.json'}")
    return 0
