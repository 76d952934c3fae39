"""Leakage over the server model's training: the audit at several checkpoints of one training.

:func:`audit_over_training` trains the scenario's model once, incrementally (:class:`~gradleak.victim.VictimTrainer`
on the train part of the data), and at each checkpoint — a number of training steps, e.g. 0, 100 and 1000 — audits
the client's round on the model as it is then. Every checkpoint draws the client's batch from the held-out part
(also at 0 steps) with the scenario's seed, so the curve follows one batch through the model's training; the
checkpoint at N > 0 steps is the audit of ``Scenario(train_steps=N)``. :func:`write_over_training` writes one audit
folder per checkpoint, the leakage curve (PNG), a JSON summary, a Markdown table and an HTML page.

For work in other processes (``gradleak sweep``), :func:`save_checkpoints` trains once and writes each checkpoint's
weights, and :func:`load_checkpoint` rebuilds the checkpoint from them; :func:`audit_checkpoint` audits the client's
round at one checkpoint either way.

Example::

    audits = audit_over_training(Scenario(batch_size=8), AuditPlan(), (0, 100, 1000))
    write_over_training(audits, "out/over-training")
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from .auditing import AuditPlan, ProgressFactory, audit, scenario_result
from .cost import CostEstimate
from .data import Dataset, load_dataset
from .errors import InputError
from .models import save_weights
from .report.curves import Line, Panel, plot_curves
from .results import AuditResult
from .scenario import GroundTruth, Scenario, build_scenario_model, simulate
from .victim import TrainingRecord, VictimTrainer, split_held_out

__all__ = [
    "Checkpoint",
    "CheckpointAudit",
    "SavedCheckpoint",
    "audit_checkpoint",
    "audit_over_training",
    "check_checkpoints",
    "checkpoints",
    "curve",
    "load_checkpoint",
    "save_checkpoints",
    "write_over_training",
]

SCHEMA = 1


@dataclass(frozen=True)
class Checkpoint:
    """The server's model after ``steps`` training steps (a copy, in the scenario's BatchNorm mode), its
    training record, and the held-out data the client draws from."""

    steps: int
    model: nn.Module
    training: TrainingRecord
    held_out: Dataset


def check_checkpoints(sc: Scenario, steps: Sequence[int]) -> None:
    """Raise :class:`InputError` unless ``steps`` are one or more training step counts >= 0 in increasing order,
    each once, and ``sc`` leaves its model's training to them (no ``train_steps`` of its own)."""
    if sc.train_steps:
        raise InputError("give the training steps as checkpoints, not also as the scenario's train_steps")
    if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise InputError(
            f"checkpoints must be one or more training step counts >= 0 in increasing order, each once; got "
            f"{list(steps)}"
        )


def checkpoints(sc: Scenario, steps: Sequence[int], data: Dataset | None = None) -> Iterator[Checkpoint]:
    """Train ``sc``'s model (its seeded initialisation, or its weights) once and yield it at each of ``steps``
    (see :func:`check_checkpoints`). ``data`` defaults to the scenario's dataset."""
    check_checkpoints(sc, steps)
    data = data if data is not None else load_dataset(sc.dataset, size=sc.image_size)
    train, held = split_held_out(data)
    model, _ = build_scenario_model(sc, data.num_classes, data.image_shape)
    trainer = VictimTrainer(model, train, batch_size=sc.train_batch, lr=sc.train_lr, seed=sc.seed)
    for n in steps:
        trainer.advance(n)
        yield Checkpoint(n, copy.deepcopy(model).train(sc.bn_mode == "train"), trainer.record(held), held)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint's weights in a file (``steps_<N>.safetensors``) and its training record."""

    steps: int
    weights: str
    training: TrainingRecord


def save_checkpoints(sc: Scenario, steps: Sequence[int], folder: str | Path) -> list[SavedCheckpoint]:
    """Train ``sc``'s model once (:func:`checkpoints`) and write its weights at each of ``steps`` into ``folder``."""
    out = []
    for cp in checkpoints(sc, steps):
        path = Path(folder) / f"steps_{cp.steps}.safetensors"
        save_weights(cp.model, path)
        out.append(SavedCheckpoint(cp.steps, str(path), cp.training))
    return out


def load_checkpoint(sc: Scenario, saved: SavedCheckpoint, data: Dataset | None = None) -> Checkpoint:
    """The checkpoint ``saved`` of ``sc``'s model: the model with its weights (in ``sc``'s BatchNorm mode) and the
    held-out part of ``data`` (default: the scenario's dataset)."""
    data = data if data is not None else load_dataset(sc.dataset, size=sc.image_size)
    _, held = split_held_out(data)
    model, _ = build_scenario_model(replace(sc, weights=saved.weights), data.num_classes, data.image_shape)
    return Checkpoint(saved.steps, model, saved.training, held)


@dataclass(frozen=True)
class CheckpointAudit:
    """The audit of the client's round at one checkpoint, and the client's batch."""

    steps: int
    result: AuditResult
    truth: GroundTruth


def audit_over_training(
    sc: Scenario,
    plan: AuditPlan | None,
    steps: Sequence[int],
    *,
    progress: ProgressFactory | None = None,
    on_estimate: Callable[[list[CostEstimate]], None] | None = None,
) -> list[CheckpointAudit]:
    """Audit ``sc``'s client round at each checkpoint of its model's training (see the module docstring);
    ``progress`` and ``on_estimate`` as in :func:`~gradleak.auditing.audit`, at every checkpoint.

    With ``plan.checkpoint_dir`` each checkpoint's attacks checkpoint to its own ``steps_<N>`` subfolder."""
    plan = plan or AuditPlan()
    out = []
    for cp in checkpoints(sc, steps):
        p = plan
        if plan.checkpoint_dir is not None:
            p = replace(plan, checkpoint_dir=str(Path(plan.checkpoint_dir) / f"steps_{cp.steps}"))
        out.append(audit_checkpoint(sc, p, cp, progress=progress, on_estimate=on_estimate))
    return out


def audit_checkpoint(
    sc: Scenario,
    plan: AuditPlan,
    cp: Checkpoint,
    *,
    progress: ProgressFactory | None = None,
    on_estimate: Callable[[list[CostEstimate]], None] | None = None,
) -> CheckpointAudit:
    """Audit ``sc``'s client round on the checkpoint's model, the client's batch drawn from its held-out data;
    the result records the scenario as ``Scenario(train_steps=cp.steps)`` with the checkpoint's training."""
    at = replace(sc, train_steps=cp.steps)
    obs, truth = simulate(at, cp.held_out, cp.model)
    truth = replace(truth, training=cp.training)
    result = audit(obs, plan, truth=truth, progress=progress, on_estimate=on_estimate)
    return CheckpointAudit(cp.steps, scenario_result(result, at, truth), truth)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def curve(audits: Sequence[CheckpointAudit]) -> list[dict[str, Any]]:
    """One row per checkpoint: the model's train and held-out accuracy, each requested label method's accuracy
    (``auto`` under its name, with the method it picked in ``label_picks``) and each attack's mean PSNR/SSIM."""
    rows = []
    for a in audits:
        r = a.result
        rows.append(
            {
                "steps": a.steps,
                "training": r.setting.get("training"),
                "labels": {run.requested: run.accuracy for run in r.labels.runs},
                "label_picks": {run.requested: run.method for run in r.labels.runs if run.result is not None},
                "attacks": {
                    run.name: {
                        "psnr": None if run.scores is None else _finite(run.scores.mean_psnr),
                        "ssim": None if run.scores is None else run.scores.mean_ssim,
                        "error": run.error,
                    }
                    for run in r.attacks
                },
            }
        )
    return rows


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    methods = list(rows[0]["labels"]) if rows else []
    attacks = list(rows[0]["attacks"]) if rows else []
    head = [
        "steps",
        "train acc",
        "held-out acc",
        *[f"labels `{m}`" for m in methods],
        "auto picked",
        *[f"{a} PSNR" for a in attacks],
        *[f"{a} SSIM" for a in attacks],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["training"] or {}
        cells = [
            str(r["steps"]),
            _f(t.get("train_accuracy")),
            _f(t.get("test_accuracy")),
            *[_f(r["labels"][m]) for m in methods],
            r["label_picks"].get("auto", "–"),
            *[_f(r["attacks"][a]["psnr"]) for a in attacks],
            *[_f(r["attacks"][a]["ssim"], 3) for a in attacks],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_panel(points: Sequence[tuple[int, dict[str, Any] | None]]) -> Panel:
    """The server model's accuracy on the train and held-out parts against its training steps, from (steps, training
    record as JSON) pairs; checkpoints without a record are left out."""
    trained = [(n, t) for n, t in points if t is not None]
    return Panel(
        "server model accuracy",
        [
            Line("train part", [(n, t["train_accuracy"]) for n, t in trained]),
            Line("held-out part", [(n, t["test_accuracy"]) for n, t in trained]),
        ],
        ylim=(0, 1.05),
    )


def write_over_training(audits: Sequence[CheckpointAudit], out: str | Path) -> dict[str, Path]:
    """Write ``steps_<N>/`` (each checkpoint's audit: results.json, report.html, grids), ``over_training.json``,
    ``leakage_over_training.png``, ``over_training.md`` and ``report.html`` into ``out``; returns their paths."""
    from .report import write_audit, write_json_atomic
    from .report.pages import write_page

    if not audits:
        raise InputError("no checkpoint was audited")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for a in audits:
        write_audit(a.result, out / f"steps_{a.steps}", truth_images=a.truth.images)
    rows = curve(audits)
    config = audits[0].result.config
    paths = {
        "json": out / "over_training.json",
        "plot": out / "leakage_over_training.png",
        "md": out / "over_training.md",
        "html": out / "report.html",
    }
    write_json_atomic(paths["json"], {"schema": SCHEMA, "kind": "over-training", "config": config, "checkpoints": rows})

    def line(label: str, get: Any) -> Line:
        return Line(label, [(r["steps"], get(r)) for r in rows if get(r) is not None])

    panels = [
        accuracy_panel([(r["steps"], r["training"]) for r in rows]),
        Panel("label accuracy", [line(m, lambda r, m=m: r["labels"][m]) for m in rows[0]["labels"]], ylim=(0, 1.05)),
    ]
    for name in rows[0]["attacks"]:
        panels.append(Panel(f"{name} PSNR (dB)", [line(name, lambda r, n=name: r["attacks"][n]["psnr"])]))
        panels.append(Panel(f"{name} SSIM", [line(name, lambda r, n=name: r["attacks"][n]["ssim"])]))
    title = (
        f"leakage over training: {config.get('model')} on {config.get('dataset')}, client batch "
        f"{config.get('batch_size')} (held-out images), training batch {config.get('train_batch')}, "
        f"lr {config.get('train_lr')}"
    )
    plot_curves(paths["plot"], panels, xlabel="training steps of the server's model", title=title, symlog=True)
    table = markdown_table(rows)
    intro = (
        f"The server's model ({config.get('model')} on `{config.get('dataset')}`) trained with seeded SGD (batch "
        f"{config.get('train_batch')}, lr {config.get('train_lr')}, momentum 0.9) on the train part of the data; at "
        f"each checkpoint the same client batch of {config.get('batch_size')} held-out images (seed "
        f"{config.get('seed')}) was audited. `auto picked` is the label method `auto` chose from the observation "
        "alone. Each checkpoint's full report is in `steps_<N>/report.html`."
    )
    paths["md"].write_text(
        f"# Leakage over training\n\n{intro}\n\n![leakage over training](leakage_over_training.png)\n\n{table}\n"
    )
    write_page(
        paths["html"],
        "gradleak: leakage over the model's training",
        paragraphs=[intro],
        images=[(paths["plot"], "leakage and model accuracy against the server model's training steps")],
        table_md=table,
    )
    return paths
