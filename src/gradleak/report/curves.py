"""Leakage curves: measures (PSNR, SSIM, label accuracy, the model's accuracy) against a model's progress —
training steps (:mod:`gradleak.over_training`) or FL rounds (``gradleak fl-demo``) — one panel per measure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Line", "Panel", "plot_curves"]


@dataclass(frozen=True)
class Line:
    """One series: ``points`` are ``(x, y)``; a line without ``emphasis`` is drawn thin and faint (one client
    of several, beside their mean)."""

    label: str
    points: Sequence[tuple[float, float]]
    emphasis: bool = True


@dataclass(frozen=True)
class Panel:
    """One measure; ``ylim`` fixes its axis (e.g. ``(0, 1)`` for accuracies), else it fits the data."""

    ylabel: str
    lines: Sequence[Line]
    ylim: tuple[float, float] | None = None


def plot_curves(
    path: str | os.PathLike[str], panels: Sequence[Panel], *, xlabel: str, title: str, symlog: bool = False
) -> Path:
    """One row of panels sharing the x axis (``symlog``: linear near 0, logarithmic beyond, for training steps
    such as 0, 100, 1000; up to 12 distinct x values are the ticks); a panel whose lines have no points says so.
    Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    xs_all = sorted({p[0] for panel in panels for line in panel.lines for p in line.points})
    for ax, panel in zip(axes[0], panels):
        drawn = False
        for line in panel.lines:
            pts = sorted(line.points)
            if not pts:
                continue
            drawn = True
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if line.emphasis:
                ax.plot(xs, ys, "o-", label=line.label, linewidth=2)
            else:
                ax.plot(xs, ys, ".-", label=line.label, linewidth=0.8, alpha=0.45, color="grey")
        if not drawn:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        if symlog:
            ax.set_xscale("symlog", linthresh=10)
        if 0 < len(xs_all) <= 12:
            ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            handles, labels = ax.get_legend_handles_labels()
            keep: dict[str, Any] = {}
            for h, lab in zip(handles, labels):
                keep.setdefault(lab, h)  # faint per-client lines share one entry
            ax.legend(keep.values(), keep.keys(), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
