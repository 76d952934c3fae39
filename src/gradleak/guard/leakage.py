"""The client's check of its own outgoing update: run the server's fast attacks on it, score them against the
batch the client trained on, and send, defend or block.

:class:`LeakageGuard` builds the Observation a server would get from this round (the model as received, the update,
the protocol, the batch size — never the server's record of a modification, which the client does not know) and
runs :func:`gradleak.audit` on it with the client's batch as ground truth: label recovery (``auto``) and the fast
attacks (:func:`fast_attacks`: ``analytic_fc`` and the malicious servers' recovery attacks that are registered).
Attacks that do not apply to the round (a convolution first, a FedAvg delta for ``analytic_fc``) are left out with
their reasons; when none applies nothing is run, not even label recovery, which only feeds the attacks.
The score is the highest PSNR of any reconstructed image (each reconstruction paired with its best-matching
image, :func:`gradleak.metrics.score_images`). At or above ``threshold_db`` the guard tries its ``remedies`` in
order (defenses from :mod:`gradleak.defenses`, each applied to the update as trained) and sends the first one
whose update scores below the threshold; if none does, or there are none, it blocks the update.

The score is only as good as the attacks that produce it: an attack the guard does not run (a long optimisation
attack such as fishing's, a recovery that needs the server's record of a modification the client cannot see, as the
trap recovery does) can still recover what the guard called safe. Run :func:`~gradleak.guard.model_check` on the
received model as well.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import ATTACKS, Attack
from ..auditing import AuditPlan, audit
from ..defenses import BatchDefense, Defense, TrainingDefense, Update
from ..errors import InputError
from ..metrics import PSNR_CAP, psnr
from ..models import find_head
from ..normalization import Normalization
from ..observation import Observation
from ..protocols import Protocol
from ..results import AuditResult
from ..scenario import GroundTruth

__all__ = ["FAST_ATTACKS", "GuardAttempt", "GuardDecision", "LeakageGuard", "fast_attacks"]

#: attacks the guard runs when registered, in order: analytic (no optimisation), milliseconds to seconds each;
#: each refuses (``problems``) where it does not apply. ``imprint`` and ``trap`` are the malicious servers'
#: recoveries: ``imprint`` finds an imprint block in the received model itself, ``trap`` reads the server's record of
#: its modification and so runs only when the client has one.
FAST_ATTACKS = ("analytic_fc", "imprint", "trap")
#: the default threshold on the highest PSNR of a reconstructed image (dB): above gradleak's "recognisable" 20 dB
#: (:data:`gradleak.results.HIGH_PSNR`) and below what exact analytic recovery reaches (> 40 dB)
THRESHOLD_DB = 25.0


def fast_attacks() -> tuple[Attack, ...]:
    """Every attack of :data:`FAST_ATTACKS` that is registered, with its defaults."""
    return tuple(ATTACKS.get(name)() for name in FAST_ATTACKS if name in ATTACKS)


@dataclass(frozen=True)
class GuardAttempt:
    """One check of one candidate update: the remedy applied (``None``: the update as trained), the score (the
    highest image PSNR of any attack; ``None`` when no attack produced images), each attack's score or the
    reason it did not run, and the label recovery's accuracy on the batch."""

    remedy: dict[str, Any] | None
    score_db: float | None
    attacks: dict[str, float | None]
    errors: dict[str, str]
    label_accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "remedy": self.remedy,
            "score_db": self.score_db,
            "attacks": self.attacks,
            "errors": self.errors,
            "label_accuracy": self.label_accuracy,
        }


@dataclass(frozen=True)
class GuardDecision:
    """What the guard decided: ``send`` (the update as trained), ``defend`` (a remedy's update) or ``block``.

    ``update`` is what to send (``None`` when blocked); ``constant_db`` is the highest PSNR a flat image of the
    batch's mean colour reaches on the batch — the level a server is left with when it receives nothing."""

    action: str
    threshold_db: float
    attempts: tuple[GuardAttempt, ...]
    update: Update | None
    constant_db: float
    seconds: float

    @property
    def score_db(self) -> float | None:
        """The score of the update as trained."""
        return self.attempts[0].score_db

    @property
    def remedy(self) -> dict[str, Any] | None:
        """The defense record of the update sent under ``defend``."""
        return self.attempts[-1].remedy if self.action == "defend" else None

    def summary(self) -> str:
        score = "no attack produced images" if self.score_db is None else f"max PSNR {self.score_db:.1f} dB"
        line = f"guard: {score} (threshold {self.threshold_db:g} dB) -> {self.action}"
        if self.action == "defend":
            after = self.attempts[-1].score_db
            line += f" with {self.remedy} ({'no images' if after is None else f'{after:.1f} dB'} after it)"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "threshold_db": self.threshold_db,
            "constant_db": self.constant_db,
            "seconds": self.seconds,
            "attempts": [a.to_json() for a in self.attempts],
        }


@dataclass(frozen=True, kw_only=True)
class LeakageGuard:
    """Checks an outgoing update with fast attacks and decides what to send (see the module docstring).

    Args:
        threshold_db: the update leaks when some reconstructed image reaches this PSNR (dB), in (0, 100].
        attacks: the attacks to run (default :func:`fast_attacks`); add e.g. ``InvertingGradients(iterations=200)``
            for an optimisation attack at the cost of its run time.
        remedies: defenses tried in order on a leaking update (e.g. ``GaussianNoise(0.01)``); none: block.
        label_methods: label recovery (the attacks use the first method that succeeds).
        seed: attack ``i`` runs with seed ``seed + i``; the remedies draw from ``seed`` too.
    """

    threshold_db: float = THRESHOLD_DB
    attacks: tuple[Attack, ...] = field(default_factory=fast_attacks)
    remedies: tuple[Defense, ...] = ()
    label_methods: tuple[str, ...] = ("auto",)
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.threshold_db
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= PSNR_CAP:
            raise InputError(f"the guard's threshold is a PSNR in (0, {PSNR_CAP:g}] dB, got {t!r}")
        training = [d.name for d in self.remedies if isinstance(d, TrainingDefense)]
        if training:
            raise InputError(f"a remedy transforms the finished update; {training} change the training instead")
        AuditPlan(label_methods=tuple(self.label_methods))  # unknown label methods fail here, before any round

    def inspect(
        self,
        model: nn.Module,
        update: Update,
        *,
        protocol: Protocol,
        images: Tensor,
        targets: Tensor,
        normalization: Normalization | None = None,
        head: str | None = None,
        server: dict[str, Any] | None = None,
    ) -> GuardDecision:
        """Decide what to send for one round: ``model`` as received (in the mode the client trained in), its
        ``update`` (gradient or delta as ``protocol`` says), the batch's ``images`` in [0, 1] and training
        ``targets`` (int64 labels or soft targets), the input ``normalization`` the model expects. ``server``: the
        record of a server modification the client knows of (it was told, or a benchmark gives the true one);
        normally the client knows none, and the malicious servers' recoveries refuse."""
        t0 = time.perf_counter()
        if images.dim() != 4 or len(images) != len(targets) or len(images) == 0:
            raise InputError(
                f"the guard needs the batch's images [B, C, H, W] and one target each, got {tuple(images.shape)} "
                f"and {tuple(targets.shape)}"
            )
        labels = targets.argmax(1) if targets.dtype.is_floating_point else targets
        logits_dim = targets.shape[1] if targets.dtype.is_floating_point else None
        obs = Observation(
            model=model,
            update=update,
            protocol=protocol,
            num_classes=logits_dim or _outputs(model, images, normalization, head),
            input_shape=tuple(images.shape[1:]),
            batch_size=len(images),
            normalization=normalization,
            head=head,
            server=server,
        )
        truth = GroundTruth(images, labels, targets, ())
        # attacks that cannot run on this round are left out here, with their reasons, rather than logged by the audit
        refused = {a.name: "; ".join(p) for a in self.attacks if (p := a.problems(obs))}
        runnable = tuple(a for a in self.attacks if a.name not in refused)
        if not runnable:  # nothing to score: no attack applies to this round (label recovery would only feed them)
            return self._decision(
                "send", (GuardAttempt(None, None, dict.fromkeys(refused), refused, None),), update, images, t0
            )
        plan = AuditPlan(label_methods=tuple(self.label_methods), attacks=runnable, seed=self.seed)
        attempts = [_attempt(audit(obs, plan, truth=truth), None, refused)]
        sent: Update | None = update
        action = "send"
        if not self._safe(attempts[-1]):
            action, sent = "block", None
            x = images if normalization is None else normalization.normalize(images)
            for i, remedy in enumerate(self.remedies):
                gen = torch.Generator().manual_seed(self.seed + 1000 + i)
                if isinstance(remedy, BatchDefense):
                    defended = remedy.transform(update, model=model, x=x, y=targets, generator=gen)
                else:
                    defended = remedy(update, generator=gen)
                result = audit(obs.with_update(defended, remedy.to_json()), plan, truth=truth)
                attempts.append(_attempt(result, remedy.to_json(), refused))
                if self._safe(attempts[-1]):
                    action, sent = "defend", defended
                    break
        return self._decision(action, tuple(attempts), sent, images, t0)

    def _decision(
        self, action: str, attempts: tuple[GuardAttempt, ...], sent: Update | None, images: Tensor, t0: float
    ) -> GuardDecision:
        return GuardDecision(
            action=action,
            threshold_db=float(self.threshold_db),
            attempts=attempts,
            update=sent,
            constant_db=constant_image_psnr(images),
            seconds=time.perf_counter() - t0,
        )

    def _safe(self, attempt: GuardAttempt) -> bool:
        return attempt.score_db is None or attempt.score_db < self.threshold_db


def _outputs(model: nn.Module, images: Tensor, normalization: Normalization | None, head: str | None) -> int:
    """The number of classes: the outputs of the head the model names (``head`` or its ``head_name``), else the
    model's output width on one input, run in eval mode (no state changes)."""
    if head is not None or getattr(model, "head_name", None):
        return find_head(model, None, head)[1].out_features
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = images[:1] if normalization is None else normalization.normalize(images[:1])
            return int(model(x).shape[-1])
    finally:
        model.train(was)


def _attempt(result: AuditResult, remedy: dict[str, Any] | None, refused: dict[str, str]) -> GuardAttempt:
    scores: dict[str, float | None] = dict.fromkeys(refused)
    errors = dict(refused)
    for run in result.attacks:
        scores[run.name] = None if run.scores is None else float(max(run.scores.psnr))
        if run.error is not None:
            errors[run.name] = run.error
    ran = [s for s in scores.values() if s is not None]
    chosen = result.labels.chosen
    return GuardAttempt(
        remedy=remedy,
        score_db=max(ran) if ran else None,
        attacks=scores,
        errors=errors,
        label_accuracy=None if chosen is None else chosen.accuracy,
    )


def constant_image_psnr(images: Tensor) -> float:
    """The highest PSNR (dB) over the batch of one flat image of the batch's mean colour: what a server that
    receives nothing reaches by guessing the data's mean."""
    flat = images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images)
    return float(psnr(flat, images).max())
