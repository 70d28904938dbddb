"""The ``txl-audio`` command. Thin: each subcommand lives in ``txl_audio/commands/NAME.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; the real work is in library functions."""

from __future__ import annotations

import argparse
import sys

from txl_audio import __version__
from txl_audio.commands import (
    compress,
    context,
    decompress,
    download,
    evaluate,
    generate,
    info,
    prepare_audio,
    prepare_text,
    train,
)
from txl_audio.config import ConfigError
from txl_audio.errors import TxlAudioError

# subcommand -> (module in txl_audio.commands, one-line help)
COMMANDS = {
    "download": (download, "fetch, verify and unpack a standard corpus (or write a paper's split)"),
    "info": (info, "show audio files' format and what the tokenizer makes of them"),
    "prepare-audio": (prepare_audio, "audio folder or manifest -> token shards"),
    "prepare-text": (prepare_text, "text corpus -> token shards"),
    "train": (train, "train a model from a TOML config"),
    "evaluate": (evaluate, "likelihood of held-out data under a checkpoint"),
    "context": (context, "how the likelihood improves with context length"),
    "generate": (generate, "sample audio (or text, from a text model) from a checkpoint"),
    "compress": (compress, "lossless compression of audio with a checkpoint (.txla files)"),
    "decompress": (decompress, ".txla files back to WAV, bit for bit"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txl-audio",
        description="Sample-level audio (and text) language modelling with Transformer-XL.",
    )
    parser.add_argument("--version", action="version", version=f"txl-audio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ConfigError as e:
        # a bad config value, key or file: a usage error, like argparse's (exit 2), found before
        # anything is written
        print(f"txl-audio {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (TxlAudioError, ValueError, FileNotFoundError, RuntimeError) as e:
        # our library raises these with messages meant for the user (path, problem, what to do)
        print(f"txl-audio {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
