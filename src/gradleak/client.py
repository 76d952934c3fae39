"""The client's local round: the protocol's update and the client's defenses, in one place; and the
aggregate the server sees of a round.

:func:`client_round` is the one place that runs a client's round with its defenses: the scenario
simulator, the Flower clients and the sweep all call it. A training defense (DP-SGD) always runs first
(it produces the update); the others follow in order. :func:`aggregate_round` averages the clients' updates
and runs the server's part of the defenses that have one (DP-FedAvg's noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .defenses import BatchDefense, Defense, DPFedAvg, TrainingDefense, Update
from .errors import InputError
from .protocols import Protocol, client_update

__all__ = ["aggregate_round", "client_round"]


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


def aggregate_round(
    updates: Sequence[Update],
    records: Sequence[dict[str, Any]],
    defenses: Sequence[Defense] = (),
    *,
    generator: torch.Generator,
) -> tuple[Update, tuple[dict[str, Any], ...]]:
    """What the server sees of one round: ``(the mean of the clients' updates, the defense records)``.

    ``records`` are a client's records from :func:`client_round` for ``defenses``. A
    :class:`~gradleak.defenses.DPFedAvg` adds its noise here, once, to the mean, and its record is replaced by
    the round's (clients, noise std, ε). Without such a defense one update is returned as it is.
    """
    if not updates:
        raise InputError("a round needs at least one client's update")
    dp = [d for d in defenses if isinstance(d, DPFedAvg)]
    if len(dp) > 1:
        raise InputError(f"at most one dpfedavg defense per round, got {len(dp)}")
    n = len(updates)
    mean = updates[0] if n == 1 else {k: torch.stack([u[k] for u in updates]).mean(0) for k in updates[0]}
    if not dp:
        return mean, tuple(records)
    mean, record = dp[0].at_server(mean, clients=n, generator=generator)
    return mean, tuple(record if r == dp[0].to_json() else r for r in records)
