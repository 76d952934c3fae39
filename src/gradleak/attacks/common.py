"""Helpers shared by the attacks: label targets, turning a match into a result, the refusal of a parameter delta."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..errors import UnsupportedError
from ..labels import LabelResult, recover_labels
from ..observation import Observation
from ..protocols import batch_order_assumption
from .base import AttackResult
from .matching import MatchResult


def label_targets(obs: Observation, labels: LabelResult | None, attack: str) -> tuple[Tensor, LabelResult]:
    """The targets an attack replays with: recovered soft labels if any, else hard labels.
    Without given labels, the default label method for the batch runs first."""
    if labels is None:
        labels = recover_labels(obs, "auto")
    if labels.soft is not None:
        return labels.soft.float(), labels
    if obs.batch_size is not None and len(labels.labels) != obs.batch_size:
        raise UnsupportedError(attack, [f"{len(labels.labels)} labels given for a batch of {obs.batch_size}"])
    return torch.tensor(labels.labels, dtype=torch.long), labels


def gradient_problems(obs: Observation) -> list[str]:
    """Why an attack that inverts one gradient refuses the observation: a FedAvg parameter delta (empty: a gradient)."""
    if obs.kind == "gradient":
        return []
    return [f"needs one gradient (FedSGD); this update is a {obs.protocol.name} parameter delta"]


def batch_size_of(obs: Observation, labels: LabelResult | None, attack: str) -> int:
    if obs.batch_size is not None:
        return obs.batch_size
    if labels is not None:
        return len(labels.labels)
    raise UnsupportedError(attack, ["the batch size is unknown: give it in the observation or give labels"])


def to_result(
    name: str,
    obs: Observation,
    match: MatchResult,
    t0: float,
    *,
    labels: list[int] | None,
    restarts: int,
    config: dict[str, Any],
    assumptions: dict[str, Any] | None = None,
    stages: dict[str, Tensor] | None = None,
) -> AttackResult:
    """Denormalise the best candidate to [0, 1] and package the run."""
    images = denormalize(obs, match.x)
    return AttackResult(
        name=name,
        images=images,
        iterations=match.iterations,
        seconds=time.perf_counter() - t0,
        final_loss=match.restart_losses[match.best_restart],
        loss_curve=match.curve,
        labels=labels,
        restarts=restarts,
        best_restart=match.best_restart,
        stages=stages or {},
        assumptions=assumptions or protocol_assumptions(obs),
        config={**config, "resumed": match.resumed} if match.resumed else config,
    )


def denormalize(obs: Observation, x: Tensor) -> Tensor:
    out = obs.normalization.denormalize(x) if obs.normalization is not None else x
    return out.clamp(0, 1).detach()


def protocol_assumptions(obs: Observation, replay: str = "known-order") -> dict[str, Any]:
    """What the attacker assumed about the client when replaying it (``replay``: see :func:`replay_protocol`)."""
    return {
        "protocol": obs.protocol.to_json(),
        "batch_order": batch_order_assumption(obs.protocol, replay),
        "batch_size": obs.batch_size,
        "bn": "train (batch statistics)" if obs.bn_train else "eval (running statistics)",
    }
