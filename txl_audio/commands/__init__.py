"""One module per subcommand of ``txl-audio``: ``add_arguments(parser)`` and ``run(args) -> int``."""
