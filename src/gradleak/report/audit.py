"""An audit's folder: PNG grids of the reconstructions, ``results.json`` and ``report.html``."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from ..results import AuditResult
from .files import write_json_atomic
from .html import AuditImages, write_html_report
from .images import save_grid

__all__ = ["write_audit"]


def write_audit(result: AuditResult, out: str | os.PathLike[str], *, truth_images: Tensor | None) -> dict[str, Path]:
    """Write ``result`` into the folder ``out`` (created if missing).

    Each attack run with reconstructions gets ``<attack>.png`` (top row ``truth_images`` when given, below
    the reconstructions in the order that pairs them with it, when scored) and one grid per stage,
    ``<attack>_<stage>.png``; then ``results.json`` (schema 1, each attack naming its image files) and
    ``report.html``. Returns the paths: ``json``, ``html`` and each attack's grid under its name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grids: dict[str, Path] = {}
    stages: dict[str, dict[str, Path]] = {}
    for run in result.attacks:
        if run.result is None or not len(run.result.images):
            continue
        images = run.result.images
        order = None if run.scores is None else run.scores.order
        truth = truth_images  # the originals the reconstructions are paired with (part of the batch, or all)
        if truth is not None and run.scores is not None and run.scores.originals is not None:
            truth = truth[run.scores.originals]
        grids[run.name] = _grid(out / f"{run.name}.png", truth, images, order)
        stages[run.name] = {
            stage: _grid(
                out / f"{run.name}_{stage.replace(' ', '_')}.png",
                truth,
                imgs,
                order if len(imgs) == len(images) else None,
            )
            for stage, imgs in run.result.stages.items()
        }
    data = result.to_json()
    for entry in data["attacks"]:
        if entry["name"] in grids:
            entry["images"] = {"grid": grids[entry["name"]].name}
            if stages[entry["name"]]:
                entry["images"]["stages"] = {stage: p.name for stage, p in stages[entry["name"]].items()}
    paths = {"json": out / "results.json", "html": out / "report.html"}
    write_json_atomic(paths["json"], data)
    write_html_report(paths["html"], result, AuditImages(grids, stages))
    return {**paths, **grids}


def _grid(path: Path, truth: Tensor | None, images: Tensor, order: list[int] | None) -> Path:
    save_grid(path, truth, images if order is None else images[order])
    return path
