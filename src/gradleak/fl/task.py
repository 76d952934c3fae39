"""The federated task run by ``gradleak fl-demo`` and the Flower apps — pure torch, no Flower.

A :class:`FlowerTask` fixes the model, the bundled dataset and how clients train; it travels as a flat
key/value config (Flower's ``run_config`` / ``ConfigRecord``). Client ``p`` of ``n`` owns a disjoint
shard of the dataset and, in round ``r``, trains on a batch drawn from its shard by a generator
seeded from ``(seed, p, r)`` — so the demo (and the tests) can rebuild the ground truth of any round
to score what the server recovered, and nothing else needs to leave the client.

The server decides the protocol and sends it in the round's config: ``fedsgd`` (one step of rate
``lr`` on the batch: the server reads the gradient as ``(θ₀ − θ₁)/lr``) or ``fedavg`` (the client
returns ``θ_K``; the server sees ``θ_K − θ₀``). Defenses and label augmentations are the client's own
(``defenses``, ``label-smoothing``, ``mixup``) and run through
:func:`~gradleak.client.client_round`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset, load_dataset
from ..defenses import parse_defense
from ..client import client_round
from ..errors import InputError
from ..models import ModelSpec
from ..protocols import FedAvg, FedSGD, Protocol
from ..scenario import draw_batch

__all__ = ["ClientBatch", "FlowerTask", "client_batch", "client_train", "protocol_config", "protocol_from_config"]


@dataclass(frozen=True, kw_only=True)
class FlowerTask:
    """The model, data and client behaviour of a federated run (defaults: the fl-demo's)."""

    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 64})
    dataset: str = "digits"
    image_size: int | None = None
    batch_size: int = 1
    protocol: Protocol = field(default_factory=FedSGD)
    lr: float = 0.1
    defenses: tuple[str, ...] = ()
    label_smoothing: float = 0.0
    mixup: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"the FedSGD step lr must be > 0, got {self.lr}")
        if self.label_smoothing and self.mixup:
            raise InputError("choose label smoothing or mixup, not both")
        for spec in self.defenses:  # fail at construction, not inside a client
            parse_defense(spec)

    # -- config (Flower's run_config / ConfigRecord hold flat scalars) ------------------------------
    def to_config(self) -> dict[str, Any]:
        return {"model": self.model, "model-kwargs": json.dumps(self.model_kwargs), "dataset": self.dataset,
                "image-size": self.image_size or 0, "batch-size": self.batch_size, **protocol_config(self.protocol),
                "lr": self.lr, "defenses": ";".join(self.defenses), "label-smoothing": self.label_smoothing,
                "mixup": self.mixup or 0.0, "seed": self.seed}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "FlowerTask":
        d = cls()
        defenses = str(cfg.get("defenses", "")).strip()
        return cls(model=str(cfg.get("model", d.model)),
                   model_kwargs=json.loads(str(cfg.get("model-kwargs", json.dumps(d.model_kwargs)))),
                   dataset=str(cfg.get("dataset", d.dataset)),
                   image_size=int(cfg.get("image-size", 0)) or None,
                   batch_size=int(cfg.get("batch-size", d.batch_size)),
                   protocol=protocol_from_config(cfg) if "protocol" in cfg else d.protocol,
                   lr=float(cfg.get("lr", d.lr)),
                   defenses=tuple(s.strip() for s in defenses.split(";") if s.strip()),
                   label_smoothing=float(cfg.get("label-smoothing", 0.0)),
                   mixup=float(cfg.get("mixup", 0.0)) or None, seed=int(cfg.get("seed", d.seed)))

    # -- model and data --------------------------------------------------------------------------
    def load_data(self) -> Dataset:
        return load_dataset(self.dataset, size=self.image_size)

    def model_spec(self, data: Dataset) -> ModelSpec:
        return ModelSpec(self.model, data.num_classes, data.image_shape, dict(self.model_kwargs))

    def initial_model(self, data: Dataset) -> nn.Module:
        """The server's starting model (seeded)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.model_spec(data).build().train()


def protocol_config(protocol: Protocol) -> dict[str, Any]:
    if isinstance(protocol, FedAvg):
        return {"protocol": "fedavg", "local-steps": protocol.local_steps, "local-lr": protocol.local_lr,
                "local-batch": protocol.local_batch or 0}
    return {"protocol": "fedsgd"}


def protocol_from_config(cfg: Mapping[str, Any]) -> Protocol:
    name = str(cfg.get("protocol", "fedsgd"))
    if name == "fedsgd":
        return FedSGD()
    if name == "fedavg":
        return FedAvg(int(cfg.get("local-steps", 5)), float(cfg.get("local-lr", 1e-2)),
                      int(cfg.get("local-batch", 0)) or None)
    raise InputError(f"unknown protocol {name!r} in the round config; use 'fedsgd' or 'fedavg'")


@dataclass(frozen=True)
class ClientBatch:
    """One client's private batch of one round (ground truth for scoring; never sent)."""

    images: Tensor      # [B, C, H, W] in [0, 1] (mixed images under mixup)
    labels: Tensor      # int64 [B], the dominant class of each target
    targets: Tensor     # int64 [B] or soft [B, N]


def _shard(n: int, partition_id: int, num_partitions: int, seed: int) -> Tensor:
    if not 0 <= partition_id < num_partitions:
        raise InputError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[partition_id::num_partitions]


def _round_generator(task: FlowerTask, partition_id: int, server_round: int) -> torch.Generator:
    return torch.Generator().manual_seed(task.seed * 1_000_003 + partition_id * 10_007 + server_round)


def client_batch(task: FlowerTask, data: Dataset, partition_id: int, num_partitions: int,
                 server_round: int) -> ClientBatch:
    """Client ``partition_id``'s batch in ``server_round`` (deterministic)."""
    shard = data.subset(_shard(len(data), partition_id, num_partitions, task.seed))
    gen = _round_generator(task, partition_id, server_round)
    n_draw = 2 * task.batch_size if task.mixup else task.batch_size
    unique = n_draw <= len(torch.unique(shard.labels))
    images, labels, targets = draw_batch(shard, task.batch_size, generator=gen, unique_labels=unique,
                                         label_smoothing=task.label_smoothing, mixup=task.mixup)
    return ClientBatch(images, labels, targets)


def client_train(task: FlowerTask, data: Dataset, model: nn.Module, protocol: Protocol, lr: float,
                 partition_id: int, num_partitions: int, server_round: int
                 ) -> tuple[dict[str, Tensor], dict[str, float], ClientBatch]:
    """The client's round: ``(state dict to send back, metrics, its batch)``.

    ``model`` holds the global arrays (it is not changed). FedSGD returns ``θ₀ − lr·g``; FedAvg
    ``θ₀ + Δ``; buffers are sent back unchanged. Metrics carry ``num-examples`` (FedAvg's weight)
    and, under DP-SGD, the ε spent this round.
    """
    batch = client_batch(task, data, partition_id, num_partitions, server_round)
    gen = _round_generator(task, partition_id, server_round + 7_919)
    defenses = tuple(parse_defense(s) for s in task.defenses)
    x = data.normalization.normalize(batch.images)
    update, records = client_round(model, protocol, x, batch.targets, defenses, generator=gen)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, u in update.items():
        state[k] = state[k] - lr * u if isinstance(protocol, FedSGD) else state[k] + u
    metrics: dict[str, float] = {"num-examples": float(len(batch.labels))}
    eps = [r["epsilon"] for r in records if r.get("epsilon") is not None]
    if eps:
        metrics["epsilon"] = float(sum(eps))
    return state, metrics, batch
