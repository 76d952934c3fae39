"""Typed command-line values: the ``type=`` functions of every command's flags.

Each turns the flag's text into a value or raises :class:`argparse.ArgumentTypeError`, which argparse
prints as one usage error naming the flag (``argument --iterations: expected an integer in [1, ...]``) and
exits 2 — before any work. :func:`output_dir` checks that an output folder can be made and written without
making it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from .data.loaders import MAX_IMAGE_SIZE

#: the largest count a flag takes (iterations, steps, clients, ...): bounded so nothing runs unbounded
MAX_COUNT = 10_000_000
#: seeds: 0 <= seed < 2**63, what every generator accepts
SEED_LIMIT = 2**63


def _short(text: str, n: int = 40) -> str:
    r = repr(text)
    return r if len(r) <= n else r[: n - 3] + "..."


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in [``lo``, ``hi``]."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {_short(text)}")
        return value

    return parse


def positive_int(max: int = MAX_COUNT) -> Callable[[str], int]:  # noqa: A002 - reads as the flag's bound
    """An integer in [1, ``max``]."""
    return int_range(1, max)


def nonnegative_int(max: int = MAX_COUNT) -> Callable[[str], int]:  # noqa: A002
    """An integer in [0, ``max``]."""
    return int_range(0, max)


def fraction_list(text: str) -> tuple[float, ...]:
    """Comma-separated fractions in (0, 1), increasing: ``0.05,0.1,0.2``."""
    parse = finite_float(0, 1, lo_open=True, hi_open=True)
    values = tuple(parse(t) for t in text.split(","))
    if any(a >= b for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"expected increasing fractions, got {_short(text)}")
    return values


def finite_float(
    lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """A finite number between ``lo`` and ``hi`` (each bound included unless ``lo_open``/``hi_open``)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    want = f"a finite number in {left}{lo}, {hi}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"expected {want}, got {_short(text)}")
        return value

    return parse


def positive_float(max: float = 1e6) -> Callable[[str], float]:  # noqa: A002
    """A finite number in (0, ``max``]."""
    return finite_float(0.0, max, lo_open=True)


#: a probability-like fraction in [0, 1) (label smoothing)
fraction = finite_float(0.0, 1.0, hi_open=True)
#: a seed: an integer in [0, 2**63)
seed = int_range(0, SEED_LIMIT - 1)
#: an image size in pixels, within the loaders' bounds
image_size = int_range(1, MAX_IMAGE_SIZE)


def step_counts(text: str) -> tuple[int, ...]:
    """Comma-separated counts in [0, MAX_COUNT] in increasing order, each once, e.g. ``0,100,1000`` (training
    checkpoints)."""
    parse = int_range(0, MAX_COUNT)
    values = tuple(parse(t) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts such as 0,100,1000, got {_short(text)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"expected counts in increasing order, each once, got {_short(text)}")
    return values


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an output folder (exists as a file, lies under a file, cannot be written), or
    ``None`` when it exists as a writable folder or its nearest existing parent is one. Makes nothing."""
    if not str(path).strip():
        return "an empty path"
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        return f"{path} lies under {existing}, which is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def output_dir(text: str) -> str:
    """An output folder that can be made and written (argparse ``type=``); see :func:`output_problem`."""
    problem = output_problem(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write the output folder there: {problem}")
    return text
