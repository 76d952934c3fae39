"""The audit: recover labels, run attacks, score against the truth if there is one → :class:`AuditResult`.

One function serves every caller (the CLI's ``audit`` and ``labels``, sweep cells, the Flower capture's
audit-as-you-go, fl-demo): :func:`audit` on an Observation, or :func:`audit_scenario` for a simulated
client. Nothing here writes files; :func:`gradleak.report.write_audit` does, at the edge. The only place
where the ground truth meets the attacks' outputs is the scoring step; attacks and label methods see the
Observation alone.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .attacks import ATTACKS, Attack
from .attacks.common import batch_size_of
from .attacks.matching import check_checkpoint_file
from .attacks.steps import StepCallback, no_progress
from .cost import CostEstimate, estimate
from .defenses import dp_guarantees
from .errors import CheckpointError, GradleakError
from .labels import LABEL_METHODS
from .metrics import LPIPS, label_accuracy, score_images
from .observation import Observation
from .results import AttackRun, AuditResult, LabelRun, LabelSection, verdict
from .scenario import GroundTruth, Scenario, simulate
from .settings import parse_settings, setting_names

log = logging.getLogger(__name__)

#: a progress-bar factory: (attack name, its index in the plan) → the callback of its steps
ProgressFactory = Callable[[str, int], StepCallback]


#: the attack an audit, a sweep and fl-demo run when none is named (issue 19: above the paper's Inverting Gradients
#: and ig_relative_tv on single images and, with its larger TV share for batches, on breaching's batches too;
#: benchmarks/core, benchmarks/performance)
DEFAULT_ATTACK = "ig_batch_tv"


def default_attacks() -> tuple[Attack, ...]:
    return (ATTACKS.get(DEFAULT_ATTACK)(),)


@dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """What to run on an Observation.

    Args:
        label_methods: label methods by name, in order; the first that succeeds feeds the attacks.
        attacks: configured attacks (``gl.attacks.InvertingGradients(iterations=300)``); see :func:`make_attacks`.
        seed: attack ``i`` runs with ``torch.Generator().manual_seed(seed + i)``.
        estimate_costs: time each attack's matching step first (``AttackRun.estimate``).
        lpips_weights: LPIPS weights (.safetensors) for scoring; without them LPIPS is not reported.
        checkpoint_dir: every attack with a ``checkpoint`` setting checkpoints to
            ``DIR/<attack>.checkpoint.safetensors`` and resumes from it.
    """

    label_methods: tuple[str, ...] = ("auto",)
    attacks: tuple[Attack, ...] = field(default_factory=default_attacks)
    seed: int = 0
    estimate_costs: bool = False
    lpips_weights: str | None = None
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        for name in self.label_methods:  # unknown names fail before any work
            LABEL_METHODS.get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "label_methods": list(self.label_methods),
            "attacks": [a.name for a in self.attacks],
            "attack_settings": {a.name: a.config_json() for a in self.attacks},
            "seed": self.seed,
            "lpips_weights": self.lpips_weights,
            "checkpoint_dir": self.checkpoint_dir,
        }


def make_attacks(names: Sequence[str], **settings: Any) -> tuple[Attack, ...]:
    """The attacks ``names``, each with ``settings`` (``None`` values are left at the attack's default). A name may
    carry settings of its own attack, ``NAME:KEY=VALUE,...`` (e.g. ``fishing:tv=0``), which win over ``settings``.

    A setting that an attack does not have is an error naming the attack and the setting.
    """
    given = {k: v for k, v in settings.items() if v is not None}
    attacks = []
    for spec in names:
        name, _, rest = spec.strip().partition(":")
        cls = ATTACKS.get(name)
        attacks.append(cls(**{**given, **parse_settings(f"attack {name!r}", rest, cls.Config)}))
    return tuple(attacks)


def run_labels(obs: Observation, methods: Sequence[str], truth: GroundTruth | None = None) -> LabelSection:
    """Run each label method; scores against ``truth`` when given."""
    runs = []
    for requested in methods:
        try:
            res = LABEL_METHODS.get(requested)().recover(obs)
        except GradleakError as e:
            runs.append(LabelRun(requested=requested, method=requested, error=str(e)))
            continue
        acc = soft_err = None
        if truth is not None:
            acc = label_accuracy(truth.labels.tolist(), res.labels)
            if res.soft is not None and truth.targets.dtype.is_floating_point:
                soft_err = float((res.soft - truth.targets).abs().max())
        runs.append(
            LabelRun(requested=requested, method=res.method, result=res, accuracy=acc, soft_max_abs_error=soft_err)
        )
    return LabelSection(runs=tuple(runs), true=None if truth is None else tuple(truth.labels.tolist()))


def _with_checkpoint(attack: Attack, folder: str | None) -> Attack:
    if folder is None or "checkpoint" not in setting_names(attack.Config):
        return attack
    return type(attack)(attack.config, checkpoint=str(Path(folder) / f"{attack.name}.checkpoint.safetensors"))


def audit(
    obs: Observation,
    plan: AuditPlan | None = None,
    *,
    truth: GroundTruth | None = None,
    progress: ProgressFactory | None = None,
    on_estimate: Callable[[list[CostEstimate]], None] | None = None,
) -> AuditResult:
    """Audit one Observation: label recovery, then every attack of ``plan`` (default: ``AuditPlan()``).

    ``truth`` (the client's batch) only scores the results. An attack that cannot run on ``obs`` is recorded
    with its reasons; one that crashes (a bug) with its traceback — neither loses the others' results.
    A checkpoint that cannot resume its attack raises :class:`~gradleak.errors.CheckpointError` and stops the
    audit, since the user asked to resume that run: an unreadable checkpoint file before any work, one of
    another run (other settings or observation) when its attack starts, before that attack's first step.
    With ``plan.estimate_costs``, ``on_estimate`` receives the estimates before any attack runs.
    """
    plan = plan or AuditPlan()
    attacks = [_with_checkpoint(a, plan.checkpoint_dir) for a in plan.attacks]
    for attack in attacks:
        if getattr(attack.config, "checkpoint", None):
            check_checkpoint_file(attack.config.checkpoint)
    lpips = LPIPS.from_file(plan.lpips_weights) if plan.lpips_weights else None
    labels = run_labels(obs, plan.label_methods, truth)
    chosen = labels.chosen
    used = None if chosen is None else chosen.result
    estimates: dict[int, CostEstimate] = {}
    if plan.estimate_costs:
        for i, attack in enumerate(attacks):
            try:
                attack.check(obs)
                est = estimate(attack, obs, batch_size_of(obs, used, attack.name))
            except GradleakError:
                continue  # its error is reported when it runs
            if est is not None:
                estimates[i] = est
        if on_estimate:
            on_estimate(list(estimates.values()))
    runs = []
    for i, attack in enumerate(attacks):
        seed = plan.seed + i
        base = AttackRun(name=attack.name, seed=seed, estimate=estimates.get(i))
        try:
            attack.check(obs)
            res = attack.run(
                obs,
                used,
                generator=torch.Generator().manual_seed(seed),
                on_step=progress(attack.name, i) if progress else no_progress,
            )
        except CheckpointError:
            raise
        except GradleakError as e:
            log.warning("attack %s failed: %s", attack.name, e)
            runs.append(replace(base, error=str(e)))
            continue
        except Exception as e:  # a bug in one attack must not lose the others' results: record it
            log.exception("attack %s crashed", attack.name)
            runs.append(replace(base, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()))
            continue
        scores = None if truth is None else score_images(res.images, truth.images, lpips=lpips)
        runs.append(replace(base, result=res, scores=scores))
    attack_runs = tuple(runs)
    return AuditResult(
        labels=labels,
        attacks=attack_runs,
        verdict=verdict(labels, attack_runs),
        setting=observed_setting(obs),
        config=plan.to_json(),
        class_names=() if truth is None else tuple(truth.classes),
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def observed_setting(obs: Observation) -> dict[str, Any]:
    """What the server knows of the round (what the report shows as the scenario), with what its DP defenses
    guarantee (ε, and the bound on any reconstruction attack at the priors of
    :data:`~gradleak.defenses.bounds.KAPPAS`)."""
    return {
        "model": None if obs.model_spec is None else obs.model_spec.name,
        "image_shape": list(obs.input_shape),
        "num_classes": obs.num_classes,
        "batch_size": obs.batch_size,
        "protocol": obs.protocol.to_json(),
        "attacker_assumes": {
            "protocol": obs.protocol.to_json(),
            "batch_size": obs.batch_size,
            "bn": "train" if obs.bn_train else "eval",
        },
        "defenses": list(obs.defenses),
        "threat": threat_model(obs),
        "privacy": [g.to_json() for g in dp_guarantees(obs.defenses)],
    }


def threat_model(obs: Observation) -> dict[str, Any]:
    """The threat model the round was observed under: the server (honest or the malicious strategy's record)
    and how many clients' updates it saw aggregated, with their assumed batch sizes."""
    return {
        "server": "honest" if obs.server is None else obs.server,
        "clients": obs.clients,
        "client_batch_sizes": None if obs.client_batch_sizes is None else list(obs.client_batch_sizes),
    }


def audit_scenario(
    scenario: Scenario,
    plan: AuditPlan | None = None,
    *,
    progress: ProgressFactory | None = None,
    on_estimate: Callable[[list[CostEstimate]], None] | None = None,
) -> tuple[AuditResult, GroundTruth]:
    """Simulate the scenario's client round and audit it; returns the result and the client's batch."""
    obs, truth = simulate(scenario)
    result = audit(obs, plan, truth=truth, progress=progress, on_estimate=on_estimate)
    return scenario_result(result, scenario, truth), truth


def scenario_result(result: AuditResult, sc: Scenario, truth: GroundTruth) -> AuditResult:
    """The audit of ``sc``'s simulated round with what the scenario adds to the observed setting: model and
    dataset names, the client's batch size, augmentation and seed, and the server model's training (if any)."""
    setting = {
        **result.setting,
        "model": sc.model,
        "dataset": sc.dataset,
        "batch_size": sc.batch_size,
        "protocol": sc.protocol.to_json(),
        "augmentation": {"label_smoothing": sc.label_smoothing, "mixup": sc.mixup},
        "seed": sc.seed,
        "training": None if truth.training is None else truth.training.to_json(),
    }
    return replace(result, setting=setting, config={**sc.to_json(), **result.config})
