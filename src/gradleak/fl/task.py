"""The federated task run by ``gradleak fl-demo`` and the Flower apps — pure torch, no Flower.

A :class:`FlowerTask` fixes the model, the bundled dataset and how clients train; it travels as a flat
key/value config (Flower's ``run_config`` / ``ConfigRecord``). Client ``p`` of ``n`` owns a disjoint
shard of the dataset and, in round ``r``, trains on a batch drawn from its shard by a generator
seeded from ``(seed, p, r)`` — so the demo (and the tests) can rebuild the ground truth of any round
to score what the server recovered, and nothing else needs to leave the client.

The server decides the protocol and sends it in the round's config (``Protocol.to_json()`` as JSON):
``fedsgd`` (one step of rate
``lr`` on the batch: the server reads the gradient as ``(θ₀ − θ₁)/lr``) or ``fedavg`` (the client
returns ``θ_K``; the server sees ``θ_K − θ₀``). Defenses and label augmentations are the client's own
(``defenses``, ``label-smoothing``, ``mixup``) and run through
:func:`~gradleak.client.client_round`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..client import client_round
from ..data import Dataset, load_dataset
from ..errors import InputError
from ..models import ModelSpec
from ..protocols import FedSGD, Protocol
from ..scenario import Scenario, draw_batch
from ..scenario_args import scenario_config, scenario_from_config

__all__ = ["ClientBatch", "FlowerTask", "client_batch", "client_train", "shard"]


def default_flower_scenario() -> Scenario:
    """The fl-demo's clients: an MLP of width 64 on the bundled digits."""
    return Scenario(model="mlp", model_kwargs={"width": 64}, dataset="digits")


@dataclass(frozen=True, kw_only=True)
class FlowerTask:
    """The clients' round (a :class:`~gradleak.scenario.Scenario`: model, data, batch, protocol, defenses,
    augmentation, BatchNorm mode, seed) and the FedSGD step ``lr`` the server asks for."""

    scenario: Scenario = field(default_factory=default_flower_scenario)
    lr: float = 0.1

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise InputError(f"the FedSGD step lr must be > 0, got {self.lr}")
        if self.scenario.train_steps:
            raise InputError(
                "the federation trains its model in its rounds: --victim-train-steps applies to audit, labels and "
                "sweep, not to Flower"
            )

    # -- config (Flower's run_config / ConfigRecord hold flat scalars, named as the CLI flags) -------
    def to_config(self) -> dict[str, Any]:
        return {**scenario_config(self.scenario), "lr": self.lr}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FlowerTask:
        return cls(scenario=scenario_from_config(dict(cfg)), lr=float(cfg.get("lr", 0.1)))

    # -- model and data --------------------------------------------------------------------------
    def load_data(self) -> Dataset:
        return load_dataset(self.scenario.dataset, size=self.scenario.image_size)

    def model_spec(self, data: Dataset) -> ModelSpec:
        return ModelSpec(self.scenario.model, data.num_classes, data.image_shape, dict(self.scenario.model_kwargs))

    def initial_model(self, data: Dataset) -> nn.Module:
        """The server's starting model (seeded), in the clients' BatchNorm mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.scenario.seed)
            return self.model_spec(data).build().train(self.scenario.bn_mode == "train")


@dataclass(frozen=True)
class ClientBatch:
    """One client's private batch of one round (ground truth for scoring; never sent)."""

    images: Tensor  # [B, C, H, W] in [0, 1] (mixed images under mixup)
    labels: Tensor  # int64 [B], the dominant class of each target
    targets: Tensor  # int64 [B] or soft [B, N]


def shard(n: int, partition_id: int, num_partitions: int, seed: int) -> Tensor:
    """The indices of client ``partition_id``'s disjoint share of ``n`` samples."""
    if not 0 <= partition_id < num_partitions:
        raise InputError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[partition_id::num_partitions]


def _round_generator(task: FlowerTask, partition_id: int, server_round: int) -> torch.Generator:
    return torch.Generator().manual_seed(task.scenario.seed * 1_000_003 + partition_id * 10_007 + server_round)


def client_batch(
    task: FlowerTask, data: Dataset, partition_id: int, num_partitions: int, server_round: int
) -> ClientBatch:
    """Client ``partition_id``'s batch in ``server_round`` (deterministic)."""
    sc = task.scenario
    own = data.subset(shard(len(data), partition_id, num_partitions, sc.seed))
    gen = _round_generator(task, partition_id, server_round)
    images, labels, targets = draw_batch(
        own,
        sc.batch_size,
        generator=gen,
        unique_labels=sc.unique_labels,
        label_smoothing=sc.label_smoothing,
        mixup=sc.mixup,
    )
    return ClientBatch(images, labels, targets)


def client_train(
    task: FlowerTask,
    data: Dataset,
    model: nn.Module,
    protocol: Protocol,
    lr: float,
    partition_id: int,
    num_partitions: int,
    server_round: int,
) -> tuple[dict[str, Tensor], dict[str, float], ClientBatch]:
    """The client's round: ``(state dict to send back, metrics, its batch)``.

    ``model`` holds the global arrays (it is not changed). FedSGD returns ``θ₀ − lr·g``; FedAvg
    ``θ₀ + Δ``; buffers are sent back unchanged. Metrics carry ``num-examples`` (FedAvg's weight)
    and, under DP-SGD, the ε spent this round.
    """
    batch = client_batch(task, data, partition_id, num_partitions, server_round)
    gen = _round_generator(task, partition_id, server_round + 7_919)
    x = data.normalization.normalize(batch.images)
    update, records = client_round(model, protocol, x, batch.targets, task.scenario.defenses, generator=gen)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, u in update.items():
        state[k] = state[k] - lr * u if isinstance(protocol, FedSGD) else state[k] + u
    metrics: dict[str, float] = {"num-examples": float(len(batch.labels))}
    eps = [r["epsilon"] for r in records if r.get("epsilon") is not None]
    if eps:
        metrics["epsilon"] = float(sum(eps))
    return state, metrics, batch
