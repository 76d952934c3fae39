"""The client's local round: the protocol's update and the client's defenses, in one place.

:func:`client_round` is the one place that runs a client's round with its defenses: the scenario
simulator, the Flower clients and the sweep all call it. A training defense (DP-SGD) always runs first
(it produces the update); the others follow in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .defenses import BatchDefense, Defense, TrainingDefense, Update
from .errors import InputError
from .protocols import Protocol, client_update

__all__ = ["client_round"]


def client_round(
    model: nn.Module,
    protocol: Protocol,
    x: Tensor,
    y: Tensor,
    defenses: Sequence[Defense] = (),
    *,
    generator: torch.Generator,
) -> tuple[Update, tuple[dict[str, Any], ...]]:
    """One client round with its defenses: ``(update the server sees, defense records in order)``.

    ``x`` is the normalised batch and ``y`` the training targets (int64 labels or soft targets).
    ``model`` is not changed.
    """
    training = [d for d in defenses if isinstance(d, TrainingDefense)]
    if len(training) > 1:
        raise InputError(f"at most one training defense per client, got {[d.name for d in training]}")
    records: list[dict[str, Any]] = []
    if training:
        update, record = training[0].train(model, protocol, x, y, generator=generator)
        records.append(record)
    else:
        update = client_update(model, protocol, x, y)
    for d in defenses:
        if isinstance(d, TrainingDefense):
            continue
        if isinstance(d, BatchDefense):
            update = d.transform(update, model=model, x=x, y=y, generator=generator)
        else:
            update = d(update, generator=generator)
        records.append(d.to_json())
    return update, tuple(records)
