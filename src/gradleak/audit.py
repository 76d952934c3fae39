"""The audit pipeline: simulate a client round, recover labels, run attacks, score, write the report.

The only place where the ground truth meets the attacks' outputs is :func:`score`; attacks and label
methods see the Observation alone.
"""
from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .attacks import ATTACKS, Attack, AttackResult
from .attacks.base import StepCallback, no_progress
from .attacks.common import batch_size_of
from .cost import CostEstimate, estimate
from .errors import GradleakError
from .labels import LABEL_METHODS, LabelResult
from .labels.auto import recover_auto
from .metrics import LPIPS, label_accuracy, score_images
from .observation import Observation
from .report import AuditImages, save_grid, write_html_report, write_json_atomic
from .results import AuditResult
from .scenario import GroundTruth, Scenario, simulate

log = logging.getLogger(__name__)
SCHEMA = 1

#: image-leak thresholds on the best attack's mean PSNR (dB): recognisable / partly recognisable
HIGH_PSNR, MEDIUM_PSNR = 20.0, 15.0


@dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """What to run on a scenario: label methods (the first that succeeds feeds the attacks), attacks
    with optional setting overrides, and where to write."""

    scenario: Scenario = field(default_factory=lambda: Scenario(bn_mode="eval"))
    label_methods: tuple[str, ...] = ("auto",)
    attacks: tuple[str, ...] = ("inverting_gradients",)
    attack_overrides: dict[str, Any] = field(default_factory=dict)
    lpips_weights: str | None = None
    checkpoint_dir: str | None = None   # each attack that supports it checkpoints to DIR/<attack>.ckpt and resumes


def resolve_label_method(name: str, obs: Observation) -> str:
    if name != "auto":
        return name
    from .labels.auto import choose
    return choose(obs)[0]


def run_labels(obs: Observation, truth: GroundTruth | None, methods: Sequence[str]) -> tuple[dict[str, Any], LabelResult | None]:
    """Run each label method; return the JSON section and the result the attacks will use."""
    section: dict[str, Any] = {"true": None if truth is None else truth.labels.tolist(), "methods": {}}
    chosen: LabelResult | None = None
    for requested in methods:
        entry: dict[str, Any] = {"recovered": None, "label_accuracy": None, "seconds": None, "soft": None, "error": None}
        try:
            name = resolve_label_method(requested, obs)
            # auto: the chosen method (or the next, if it refuses at run time); details["auto"] says which and why
            res = recover_auto(obs) if requested == "auto" else LABEL_METHODS.get(name)().recover(obs)
            name = res.method
        except GradleakError as e:
            name = requested
            entry["error"] = str(e)
        else:
            entry.update(res.to_json())
            if truth is not None:
                entry["label_accuracy"] = label_accuracy(truth.labels.tolist(), res.labels)
                if res.soft is not None and truth.targets.dtype.is_floating_point:
                    entry["soft_max_abs_error"] = float((res.soft - truth.targets).abs().max())
            chosen = chosen or res
        section["methods"][name] = entry
    section["used_by_attacks"] = None if chosen is None else chosen.method
    return section, chosen


def make_attack(name: str, overrides: dict[str, Any]) -> Attack:
    """The attack ``name`` with the overrides its settings have (others, and ``None`` values, ignored)."""
    cls: type[Attack] = ATTACKS.get(name)
    fields_ = getattr(cls.Config, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in overrides.items() if k in fields_ and v is not None})


def run_attack(name: str, obs: Observation, labels: LabelResult | None, overrides: dict[str, Any], *,
               seed: int, on_step: StepCallback = no_progress) -> AttackResult:
    attack = make_attack(name, overrides)
    attack.check(obs)
    return attack.run(obs, labels, generator=torch.Generator().manual_seed(seed), on_step=on_step)


def estimate_costs(plan: AuditPlan, obs: Observation, labels: LabelResult | None) -> dict[str, CostEstimate]:
    """Each matching attack's estimated cost on this machine (:mod:`gradleak.cost`); attacks that
    cannot run on ``obs`` are left out (their error is reported when they run)."""
    out: dict[str, CostEstimate] = {}
    for name in plan.attacks:
        try:
            attack = make_attack(name, plan.attack_overrides)
            attack.check(obs)
            est = estimate(attack, obs, batch_size_of(obs, labels, name))
        except GradleakError:
            continue
        if est is not None:
            out[name] = est
    return out


def score(result: AttackResult, truth: GroundTruth, lpips: LPIPS | None) -> dict[str, Any]:
    s = score_images(result.images, truth.images, lpips=lpips)
    out = s.to_json()
    out["order"] = s.order
    return out


def verdict(labels: dict[str, Any], attacks: list[dict[str, Any]]) -> dict[str, str]:
    """A plain-language verdict from the best attack's PSNR and the best label accuracy."""
    psnrs = [a["mean_psnr"] for a in attacks if a.get("mean_psnr") is not None]
    accs = [m["label_accuracy"] for m in labels.get("methods", {}).values() if m.get("label_accuracy") is not None]
    best_psnr = max(psnrs) if psnrs else None
    best_acc = max(accs) if accs else None
    parts = []
    if best_acc is not None:
        parts.append(f"labels recovered with accuracy {best_acc:.0%}")
    if best_psnr is not None:
        parts.append(f"best image reconstruction {best_psnr:.1f} dB PSNR")
    if best_psnr is not None and best_psnr >= HIGH_PSNR:
        level, what = "high", "The client's images are recognisable from its update"
    elif best_psnr is not None and best_psnr >= MEDIUM_PSNR:
        level, what = "medium", "The client's images are partly recoverable from its update"
    elif best_acc is not None and best_acc >= 0.9:
        level, what = "medium", "The client's labels leak, its images were not recovered by these attacks"
    else:
        level, what = "low", "These attacks recovered neither recognisable images nor the labels"
    return {"level": level, "summary": f"{what}: {'; '.join(parts) or 'nothing scored'}."}


def run_audit(plan: AuditPlan, out: str | Path, *,
              progress: Callable[[str, int], StepCallback] | None = None,
              on_estimate: Callable[[list[CostEstimate]], None] | None = None) -> dict[str, Any]:
    """Run the whole audit and write ``results.json``, ``report.html`` and PNG grids into ``out``.
    With ``on_estimate``, the attacks' costs are estimated first and handed to it before any runs."""
    for name in plan.attacks:  # fail on unknown names before any work
        ATTACKS.get(name)
    for name in plan.label_methods:
        if name != "auto":
            LABEL_METHODS.get(name)
    out = Path(out)
    sc = plan.scenario
    lpips = LPIPS.from_file(plan.lpips_weights) if plan.lpips_weights else None
    obs, truth = simulate(sc)
    out.mkdir(parents=True, exist_ok=True)
    label_section, labels = run_labels(obs, truth, plan.label_methods)
    estimates = estimate_costs(plan, obs, labels) if on_estimate else {}
    if on_estimate:
        on_estimate(list(estimates.values()))
    attacks: list[dict[str, Any]] = []
    for i, name in enumerate(plan.attacks):
        entry: dict[str, Any] = {"name": name, "error": None}
        if name in estimates:
            entry["estimated_seconds"] = estimates[name].seconds
        try:
            on_step = progress(name, i) if progress else no_progress
            overrides = dict(plan.attack_overrides)
            if plan.checkpoint_dir:
                overrides["checkpoint"] = str(Path(plan.checkpoint_dir) / f"{name}.ckpt")
            res = run_attack(name, obs, labels, overrides, seed=sc.seed + i, on_step=on_step)
        except GradleakError as e:
            log.warning("attack %s failed: %s", name, e)
            entry["error"] = str(e)
            attacks.append(entry)
            continue
        except Exception as e:  # a bug in one attack must not lose the others' results: record it
            log.exception("attack %s crashed", name)
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            attacks.append(entry)
            continue
        entry.update(res.to_json())
        scores = score(res, truth, lpips)
        entry.update(scores)
        ordered = res.images[scores["order"]]
        grid = f"{name}.png"
        save_grid(out / grid, truth.images, [ordered])
        entry["images"] = {"grid": grid}
        if res.stages:
            entry["images"]["stages"] = {}
            for stage, imgs in res.stages.items():
                fname = f"{name}_{stage.replace(' ', '_')}.png"
                save_grid(out / fname, truth.images, [imgs[scores["order"]] if len(imgs) == len(res.images) else imgs])
                entry["images"]["stages"][stage] = fname
        attacks.append(entry)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "gradleak_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {**sc.to_json(), "label_methods": list(plan.label_methods), "attacks": list(plan.attacks),
                   "attack_overrides": plan.attack_overrides, "lpips_weights": plan.lpips_weights,
                   "checkpoint_dir": plan.checkpoint_dir},
        "scenario": {
            "model": sc.model, "dataset": sc.dataset, "image_shape": list(obs.input_shape),
            "num_classes": obs.num_classes, "batch_size": sc.batch_size, "protocol": sc.protocol.to_json(),
            "attacker_assumes": {"protocol": obs.protocol.to_json(), "batch_size": obs.batch_size,
                                 "bn": "train" if obs.bn_train else "eval"},
            "defenses": list(obs.defenses),
            "augmentation": {"label_smoothing": sc.label_smoothing, "mixup": sc.mixup},
            "seed": sc.seed, "class_names": list(truth.classes),
        },
        "labels": label_section,
        "attacks": attacks,
    }
    results["verdict"] = verdict(label_section, attacks)
    write_json_atomic(out / "results.json", results)
    files = {a["name"]: a["images"] for a in attacks if "images" in a}
    images = AuditImages(grids={n: out / f["grid"] for n, f in files.items()},
                         stages={n: {s: out / p for s, p in f.get("stages", {}).items()} for n, f in files.items()})
    write_html_report(out / "report.html", AuditResult.from_json(results), images)
    return results


def run_label_audit(scenario: Scenario, methods: Sequence[str]) -> dict[str, Any]:
    """Label recovery only (``gradleak labels``)."""
    t0 = time.perf_counter()
    for name in methods:
        if name != "auto":
            LABEL_METHODS.get(name)
    obs, truth = simulate(scenario)
    section, _ = run_labels(obs, truth, methods)
    return {"schema": SCHEMA, "gradleak_version": __version__, "config": scenario.to_json(),
            "labels": section, "seconds": time.perf_counter() - t0}
