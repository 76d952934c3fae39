"""Typed, frozen results of an audit: what :func:`gradleak.audit` returns and the report renders.

JSON exists only at the edge: :meth:`AuditResult.to_json` writes the ``results.json`` layout (schema 1,
unchanged since 0.1: one flat entry per label method and per attack) and :meth:`AuditResult.from_json`
reads it back, from this version or from 0.1 files. Tensors (reconstructions, soft labels) are not in
the JSON: a result read back has empty reconstructions; the images live in the PNG files beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .attacks.base import AttackResult
from .cost import CostEstimate
from .labels.base import LabelResult
from .metrics import ImageScores

SCHEMA = 1

#: image-leak thresholds on the best attack's mean PSNR (dB): recognisable / partly recognisable
HIGH_PSNR, MEDIUM_PSNR = 20.0, 15.0


@dataclass(frozen=True)
class LabelRun:
    """One requested label method: what ran (``auto`` names its pick), its result or error, its scores."""

    requested: str
    method: str
    result: LabelResult | None = None
    error: str | None = None
    accuracy: float | None = None  # against the truth, if the audit had one
    soft_max_abs_error: float | None = None  # soft labels against soft targets, if both exist

    @property
    def oracle_inputs(self) -> dict[str, str]:
        """Inputs the method took that a server cannot observe (name → what it is), from its details."""
        return {} if self.result is None else dict(self.result.details.get("oracle_inputs") or {})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recovered": None,
            "label_accuracy": self.accuracy,
            "seconds": None,
            "soft": None,
            "error": self.error,
            "requested": self.requested,
        }
        if self.result is not None:
            out.update(self.result.to_json())
        if self.soft_max_abs_error is not None:
            out["soft_max_abs_error"] = self.soft_max_abs_error
        return out

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> LabelRun:
        result = None
        if d.get("recovered") is not None:
            soft = None if d.get("soft") is None else torch.tensor(d["soft"], dtype=torch.float32)
            result = LabelResult(
                method=d.get("method", name),
                labels=[int(v) for v in d["recovered"]],
                soft=soft,
                seconds=float(d.get("seconds") or 0.0),
                details=dict(d.get("details") or {}),
            )
        return cls(
            requested=d.get("requested", name),
            method=name,
            result=result,
            error=d.get("error"),
            accuracy=d.get("label_accuracy"),
            soft_max_abs_error=d.get("soft_max_abs_error"),
        )


@dataclass(frozen=True)
class LabelSection:
    """Every label method's run; the first that succeeded feeds the attacks."""

    runs: tuple[LabelRun, ...] = ()
    true: tuple[int, ...] | None = None

    @property
    def chosen(self) -> LabelRun | None:
        return next((r for r in self.runs if r.result is not None), None)

    def to_json(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "true": None if self.true is None else list(self.true),
            "methods": {r.method: r.to_json() for r in self.runs},
            "used_by_attacks": None if chosen is None else chosen.method,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSection:
        true = d.get("true")
        return cls(
            runs=tuple(LabelRun.from_json(n, m) for n, m in (d.get("methods") or {}).items()),
            true=None if true is None else tuple(int(t) for t in true),
        )


_ATTACK_RESULT_KEYS = (
    "iterations",
    "seconds",
    "final_loss",
    "loss_curve",
    "labels",
    "restarts",
    "best_restart",
    "assumptions",
    "config",
)


@dataclass(frozen=True)
class AttackRun:
    """One attack of the plan: its result (or error), its scores against the truth, its cost estimate."""

    name: str
    seed: int
    result: AttackResult | None = None
    scores: ImageScores | None = None
    estimate: CostEstimate | None = None
    error: str | None = None
    traceback: str | None = None  # only for a crash (a bug), never for a refused attack

    @property
    def mean_psnr(self) -> float | None:
        return None if self.scores is None else self.scores.mean_psnr

    @property
    def oracle_inputs(self) -> dict[str, str]:
        """Inputs the attack took that a server cannot observe (name → what it is), from its assumptions."""
        return {} if self.result is None else dict(self.result.assumptions.get("oracle_inputs") or {})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "error": self.error}
        if self.estimate is not None:
            out["estimated_seconds"] = self.estimate.seconds
            out["estimate"] = self.estimate.to_json()
        if self.result is not None:
            out.update(self.result.to_json())
        if self.scores is not None:
            out.update(self.scores.to_json())
        if self.traceback is not None:
            out["traceback"] = self.traceback
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackRun:
        result = scores = None
        if d.get("iterations") is not None:
            kw = {k: d[k] for k in _ATTACK_RESULT_KEYS if k in d}
            kw["loss_curve"] = [(int(i), float("nan") if v is None else float(v)) for i, v in kw.get("loss_curve", [])]
            result = AttackResult(name=d["name"], images=torch.empty(0), **kw)
        if d.get("psnr") is not None:
            scores = ImageScores(
                order=list(d["order"]),
                psnr=list(d["psnr"]),
                ssim=list(d["ssim"]),
                lpips=d.get("lpips"),
                originals=None if d.get("originals") is None else list(d["originals"]),
                grey_psnr=None if d.get("grey_psnr") is None else list(d["grey_psnr"]),
            )
        estimate = None
        if d.get("estimate") is not None:
            estimate = CostEstimate.from_json(d["estimate"])
        return cls(
            name=d["name"],
            seed=int(d.get("seed", 0)),
            result=result,
            scores=scores,
            estimate=estimate,
            error=d.get("error"),
            traceback=d.get("traceback"),
        )


@dataclass(frozen=True)
class Verdict:
    """A plain-language verdict: ``level`` is ``high``, ``medium`` or ``low``."""

    level: str
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "summary": self.summary}


def verdict(labels: LabelSection, attacks: tuple[AttackRun, ...]) -> Verdict:
    """From the best attack's PSNR (the audit's worst case) and the accuracy of the labels the attacks used
    (the label method an attacker would pick without ground truth). A reconstruction that scores no higher than a
    constant grey image at the batch's mean (``ImageScores.grey_psnr``) recovered nothing, whatever its PSNR."""
    scored = [a.scores for a in attacks if a.scores is not None]
    best = max(scored, key=lambda sc: sc.mean_psnr, default=None)
    best_psnr = None if best is None else best.mean_psnr
    grey = None if best is None else best.mean_grey_psnr
    chosen = labels.chosen
    acc = None if chosen is None else chosen.accuracy
    parts = []
    if acc is not None:
        parts.append(f"labels recovered with accuracy {acc:.0%} ({chosen.method if chosen else ''})")
    if best_psnr is not None:
        parts.append(
            f"best image reconstruction {best_psnr:.1f} dB PSNR"
            + ("" if grey is None else f" (a grey image scores {grey:.1f} dB)")
        )
    if best_psnr is not None and grey is not None and best_psnr <= grey:
        best_psnr = None  # no better than reconstructing nothing
    if best_psnr is not None and best_psnr >= HIGH_PSNR:
        level, what = "high", "The client's images are recognisable from its update"
    elif best_psnr is not None and best_psnr >= MEDIUM_PSNR:
        level, what = "medium", "The client's images are partly recoverable from its update"
    elif acc is not None and acc >= 0.9:
        level, what = "medium", "The client's labels leak, its images were not recovered by these attacks"
    else:
        level, what = "low", "These attacks recovered neither recognisable images nor the labels"
    return Verdict(level, f"{what}: {'; '.join(parts) or 'nothing scored'}.")


@dataclass(frozen=True)
class AuditResult:
    """The whole audit of one Observation.

    ``setting`` is what the server observed (model, input shape, classes, protocol it assumes, batch size,
    BatchNorm mode, defense records); ``config`` the plan (and the scenario, for a simulated client).
    ``class_names`` come with the ground truth, if the audit had one.
    """

    labels: LabelSection
    attacks: tuple[AttackRun, ...]
    verdict: Verdict
    setting: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    version: str = ""
    created: str = ""

    def attack(self, name: str) -> AttackRun:
        return next(a for a in self.attacks if a.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "gradleak_version": self.version,
            "created": self.created,
            "config": self.config,
            "scenario": {**self.setting, "class_names": list(self.class_names)},
            "labels": self.labels.to_json(),
            "attacks": [a.to_json() for a in self.attacks],
            "verdict": self.verdict.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditResult:
        """Read a ``results.json`` (schema 1: this version's and gradleak 0.1's)."""
        from .errors import InputError

        if d.get("schema") != SCHEMA:
            raise InputError(f"results schema {d.get('schema')!r} is not supported (this version reads {SCHEMA})")
        setting = dict(d.get("scenario") or {})
        names = tuple(setting.pop("class_names", ()) or ())
        v = d.get("verdict") or {}
        return cls(
            labels=LabelSection.from_json(d.get("labels") or {}),
            attacks=tuple(AttackRun.from_json(a) for a in d.get("attacks") or []),
            verdict=Verdict(str(v.get("level", "")), str(v.get("summary", ""))),
            setting=setting,
            config=dict(d.get("config") or {}),
            class_names=names,
            version=str(d.get("gradleak_version", "")),
            created=str(d.get("created", "")),
        )
