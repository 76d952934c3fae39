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
from ..defenses import Defense, DPFedAvg, parse_defense
from ..errors import InputError
from ..guard import LeakageGuard
from ..models import ModelSpec
from ..protocols import FedSGD, Protocol
from ..scenario import Scenario, defense_spec, draw_batch
from ..scenario_args import scenario_config, scenario_from_config

__all__ = ["ClientBatch", "FlowerTask", "client_batch", "client_train", "shard", "state_after", "update_between"]


def _flag(value: Any) -> bool:
    """A boolean run_config value (TOML gives a bool; a string from the command line is true/false/1/0)."""
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1", "false", "0"):
        return str(value).strip().lower() in ("true", "1")
    raise InputError(f"model-check must be true or false, got {value!r}")


def default_flower_scenario() -> Scenario:
    """The fl-demo's clients: an MLP of width 64 on the bundled digits."""
    return Scenario(model="mlp", model_kwargs={"width": 64}, dataset="digits")


@dataclass(frozen=True, kw_only=True)
class FlowerTask:
    """The clients' round (a :class:`~gradleak.scenario.Scenario`: model, data, batch, protocol, defenses,
    augmentation, BatchNorm mode, seed), the FedSGD step ``lr`` the server asks for, and the clients' own
    protection (:mod:`gradleak.guard`): ``model_check`` runs :func:`~gradleak.guard.model_check` on every received
    model and refuses to train on one that fails; ``guard_db`` runs a :class:`~gradleak.guard.LeakageGuard` with
    that threshold on every outgoing update, trying ``guard_remedies`` (defenses) before it blocks."""

    scenario: Scenario = field(default_factory=default_flower_scenario)
    lr: float = 0.1
    model_check: bool = False
    guard_db: float | None = None
    guard_remedies: tuple[Defense, ...] = ()

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise InputError(f"the FedSGD step lr must be > 0, got {self.lr}")
        if self.scenario.train_steps:
            raise InputError(
                "the federation trains its model in its rounds: --victim-train-steps applies to audit, labels and "
                "sweep, not to Flower"
            )
        if any(isinstance(d, DPFedAvg) for d in self.scenario.defenses):
            raise InputError(
                "dpfedavg's noise is added by the server at aggregation, which the Flower demo's FedAvg does not do: "
                "wrap the strategy in Flower's DifferentialPrivacyServerSideFixedClipping instead (the demo would "
                "only clip and report no guarantee)"
            )
        if self.guard_remedies and self.guard_db is None:
            raise InputError("guard remedies need a guard: set its threshold (guard_db / run_config 'guard')")
        self.leakage_guard()  # a bad threshold or remedy fails here, before any round

    def leakage_guard(self) -> LeakageGuard | None:
        """The clients' guard on their outgoing updates, if they run one."""
        return None if self.guard_db is None else LeakageGuard(threshold_db=self.guard_db, remedies=self.guard_remedies)

    # -- config (Flower's run_config / ConfigRecord hold flat scalars, named as the CLI flags) -------
    def to_config(self) -> dict[str, Any]:
        """The flat config; ``model-check`` (bool), ``guard`` (the guard's PSNR threshold in dB, 0: no guard) and
        ``guard-remedies`` (``;``-separated defense specs) are the clients' protection."""
        return {
            **scenario_config(self.scenario),
            "lr": self.lr,
            "model-check": self.model_check,
            "guard": self.guard_db or 0.0,
            "guard-remedies": ";".join(defense_spec(d) for d in self.guard_remedies),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FlowerTask:
        guard = float(cfg.get("guard") or 0.0)
        remedies = tuple(parse_defense(s.strip()) for s in str(cfg.get("guard-remedies") or "").split(";") if s.strip())
        return cls(
            scenario=scenario_from_config(dict(cfg)),
            lr=float(cfg.get("lr", 0.1)),
            model_check=_flag(cfg.get("model-check", False)),
            guard_db=guard or None,
            guard_remedies=remedies,
        )

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
    state = state_after(model.state_dict(), update, protocol, lr)
    metrics: dict[str, float] = {"num-examples": float(len(batch.labels))}
    eps = [r["epsilon"] for r in records if r.get("epsilon") is not None]
    if eps:
        metrics["epsilon"] = float(sum(eps))
    return state, metrics, batch


def state_after(
    sent: Mapping[str, Tensor], update: Mapping[str, Tensor], protocol: Protocol, lr: float
) -> dict[str, Tensor]:
    """The arrays a client returns for ``update``: FedSGD ``θ₀ − lr·g``, FedAvg ``θ₀ + Δ``; entries the update does
    not hold (buffers) as sent."""
    state = {k: v.detach().clone() for k, v in sent.items()}
    for k, u in update.items():
        state[k] = state[k] - lr * u if isinstance(protocol, FedSGD) else state[k] + u
    return state


def update_between(
    sent: Mapping[str, Tensor], returned: Mapping[str, Tensor], names: list[str], protocol: Protocol, lr: float
) -> dict[str, Tensor]:
    """The update of parameters ``names`` that returned arrays imply (the inverse of :func:`state_after`): FedSGD
    the gradient ``(θ₀ − θ₁)/lr`` (computed in float64), FedAvg the delta ``θ_K − θ₀``."""
    missing = [k for k in names if k not in returned]
    if missing:
        raise InputError(f"the client's arrays lack {len(missing)} parameters, e.g. {missing[:3]}")
    if isinstance(protocol, FedSGD):
        return {k: (sent[k].double() - returned[k].double()).div(lr).float() for k in names}
    return {k: returned[k] - sent[k] for k in names}
