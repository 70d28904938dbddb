"""``txl-audio download NAME [--to DIR]``: fetch, verify and unpack a standard corpus (or write a
protocol's manifest); prints the path to use on stdout (progress and notes on stderr), so recipes
can write ``data=$(txl-audio download sc09)``."""

from __future__ import annotations

import argparse
import sys

from txl_audio.datasets import download, names, table_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a corpus or protocol (--list shows them): " + ", ".join(names()))
    p.add_argument("--to", metavar="DIR", default=None,
                   help="cache folder (default: $TXL_DATA, else $XDG_CACHE_HOME/txl_audio or "
                        "~/.cache/txl_audio); archives go to DIR/downloads, corpora to DIR/NAME; a file "
                        "put in DIR/downloads by hand is verified and used")
    p.add_argument("--list", action="store_true", help="list the corpora (size, licence) and protocols")
    p.add_argument("--delete-archives", action="store_true",
                   help="delete the archives once unpacked (saves the space of a second copy)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        print(table_text())
        return 0 if args.list else 2
    result = download(args.name, to=args.to, progress=not args.quiet, delete_archives=args.delete_archives)
    what = f"downloaded {', '.join(result.downloaded)}" if result.downloaded else "nothing to download"
    extra = f"; {result.summary}" if result.summary else ""
    print(f"{result.name}: {what}{extra}; ready at {result.path}", file=sys.stderr)
    print(result.path)
    return 0
