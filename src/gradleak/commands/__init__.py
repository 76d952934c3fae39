"""The command line's commands: one module per command (named as the command, ``-`` → ``_``), each with
``register(subparsers)`` adding its parser (whose ``func`` runs it) and ``run(args) -> exit status``."""
