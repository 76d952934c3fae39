"""Progress output of long commands: a tqdm bar per attack, the cost estimates before a run, the server model's
training."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ..attacks.steps import Step, StepCallback
from ..cost import CostEstimate


def progress_bars(enabled: bool) -> Any:
    """A factory of tqdm progress bars, one per attack (``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(name: str, index: int) -> StepCallback:
        bar = None

        def on_step(step: Step) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(desc=name, total=step.total, unit="it", leave=True, dynamic_ncols=True)
            bar.total = step.total
            bar.n = step.iteration
            bar.set_postfix_str(f"loss {step.loss:.4g}{' ' + step.stage if step.stage else ''}", refresh=False)
            bar.refresh()
            if step.iteration >= step.total:
                bar.close()

        return on_step

    return factory


def print_estimates(estimates: Sequence[CostEstimate]) -> None:
    if estimates:
        total = sum(e.seconds for e in estimates)
        print(f"estimated cost on this machine (≈ {total / 60:.1f} min in all):", file=sys.stderr)
        for e in estimates:
            print(f"  {e.describe()}", file=sys.stderr)


def print_training(setting: dict[str, Any]) -> None:
    """One line on the server model's training before the round, if the audit's setting records one."""
    t = setting.get("training")
    if t:
        print(
            f"server's model: {t['steps']} training steps on {t['train_images']} images, train accuracy "
            f"{t['train_accuracy']:.2f}, held-out test accuracy {t['test_accuracy']:.2f} on {t['held_out_images']}"
        )
