"""The command line — thin: parse → build objects → run → report. Each command lives in
:mod:`gradleak.commands`.

User errors (:class:`~gradleak.errors.GradleakError`) print one message and exit 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from . import commands
from .errors import GradleakError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradleak", description="Audit how much private training data leaks from federated-learning updates."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except GradleakError as e:
        print(f"gradleak: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the Python docs' recipe for SIGPIPE
        return 0


if __name__ == "__main__":
    sys.exit(main())
