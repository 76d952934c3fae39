"""Progress of a long run: the :class:`Step` handed to ``on_step`` callbacks (the engine and every attack
report through it; attacks never print)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """Progress of a long run, handed to ``on_step`` callbacks."""

    iteration: int
    total: int
    loss: float
    stage: str = ""


StepCallback = Callable[[Step], None]


def no_progress(step: Step) -> None:
    return None
