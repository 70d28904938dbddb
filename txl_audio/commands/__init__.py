"""One module per subcommand of ``txl-audio``: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules parse and print; the work is done by library functions. They never import each other
(shared argument groups live in :mod:`txl_audio.commands.common`). A command whose library needs torch
imports it inside ``run``: ``import torch`` takes 1.1 s on the 2-core development machine (measured
2026-11-29, torch 2.13 CPU) and ``cli.py`` imports every command module to build its parser, so
``txl-audio info`` and ``txl-audio --help`` would pay it.
"""
