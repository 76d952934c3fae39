"""A simulated client round: model + data + protocol + augmentation + defenses → (Observation, GroundTruth).

The ground truth (the client's images and labels) is returned separately and only ever reaches
``metrics``; attacks see the :class:`~gradleak.observation.Observation` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .client import aggregate_round, client_round
from .data import Dataset, load_dataset
from .defenses import Defense, LabelSmoothing, Mixup, parse_defense
from .errors import InputError
from .models import ModelSpec, find_head, load_weights
from .observation import Observation
from .observation_schema import protocol_from_json
from .protocols import FedSGD, Protocol
from .servers import ServerStrategy, server_from_json
from .victim import TrainingRecord, VictimTrainer, split_held_out


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Everything that defines one audited client round; the defaults are the tool's default audit, and every
    command (audit, labels, sweep, fl-demo, the Flower apps) builds its client round from this one class.

    The client draws its batch the way a data loader does (labels may repeat; ``unique_labels=True`` asks for
    distinct labels) and trains with BatchNorm in ``bn_mode``: ``eval`` uses the running statistics the server
    sent (default), ``train`` the batch's statistics.

    The threat model: ``clients`` > 1 is secure aggregation — that many clients, each with its own batch of
    ``batch_size`` (all distinct samples), train the same model and the server sees only the mean of their
    updates; ``server`` is a malicious :class:`~gradleak.servers.ServerStrategy` that modifies the model before
    sending it (``None``: an honest server).

    The model's life: ``train_steps`` > 0 trains the server's model first (seeded SGD, ``train_batch`` images a
    step, learning rate ``train_lr``, momentum 0.9, BatchNorm in train mode; :mod:`gradleak.victim`) on the train
    part of the dataset, and the client then draws its batch from the held-out part, never trained on.
    """

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    head: str | None = None
    dataset: str = "photos"
    image_size: int | None = None
    batch_size: int = 1
    unique_labels: bool = False
    protocol: Protocol = field(default_factory=FedSGD)
    defenses: tuple[Defense, ...] = ()
    label_smoothing: float = 0.0
    mixup: float | None = None
    bn_mode: str = "eval"
    seed: int = 0
    server_knows_batch_size: bool = True
    assumed_protocol: Protocol | None = None  # what the server assumes, if not the true protocol
    clients: int = 1
    server: ServerStrategy | None = None
    train_steps: int = 0
    train_batch: int = 32
    train_lr: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.clients < 1:
            raise InputError(f"clients must be >= 1, got {self.clients}")
        if self.bn_mode not in ("train", "eval"):
            raise InputError(f"bn_mode must be 'train' or 'eval', got {self.bn_mode!r}")
        if self.label_smoothing and self.mixup:
            raise InputError("choose label smoothing or mixup, not both")
        if self.train_steps < 0 or self.train_batch < 2 or not self.train_lr > 0:
            raise InputError(
                f"training the server's model needs train_steps >= 0, train_batch >= 2 (BatchNorm) and train_lr > 0; "
                f"got {self.train_steps}, {self.train_batch}, {self.train_lr}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "weights": self.weights,
            "dataset": self.dataset,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "unique_labels": self.unique_labels,
            "protocol": self.protocol.to_json(),
            "defenses": [d.to_json() for d in self.defenses],
            "augmentation": {"label_smoothing": self.label_smoothing, "mixup": self.mixup},
            "bn_mode": self.bn_mode,
            "seed": self.seed,
            "assumed_protocol": None if self.assumed_protocol is None else self.assumed_protocol.to_json(),
            "head": self.head,
            "server_knows_batch_size": self.server_knows_batch_size,
            "clients": self.clients,
            "server": None if self.server is None else self.server.to_json(),
            "train_steps": self.train_steps,
            "train_batch": self.train_batch,
            "train_lr": self.train_lr,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scenario:
        """The scenario :meth:`to_json` wrote."""
        aug = d.get("augmentation") or {}
        assumed = d.get("assumed_protocol")
        return cls(
            model=d["model"],
            model_kwargs=dict(d.get("model_kwargs") or {}),
            weights=d.get("weights"),
            head=d.get("head"),
            dataset=d["dataset"],
            image_size=d.get("image_size"),
            batch_size=int(d["batch_size"]),
            unique_labels=bool(d.get("unique_labels", False)),
            protocol=protocol_from_json(d["protocol"]),
            defenses=tuple(defense_from_json(r) for r in d.get("defenses") or ()),
            label_smoothing=float(aug.get("label_smoothing") or 0.0),
            mixup=aug.get("mixup"),
            bn_mode=d.get("bn_mode", "eval"),
            seed=int(d.get("seed", 0)),
            server_knows_batch_size=bool(d.get("server_knows_batch_size", True)),
            assumed_protocol=None if assumed is None else protocol_from_json(assumed),
            clients=int(d.get("clients", 1)),
            server=server_from_json(d.get("server")),
            train_steps=int(d.get("train_steps", 0)),
            train_batch=int(d.get("train_batch", 32)),
            train_lr=float(d.get("train_lr", 0.01)),
        )


def defense_spec(defense: Defense | dict[str, Any]) -> str:
    """The spec string (``name:key=value,...``) of a defense or of its ``to_json()`` record, which
    :func:`~gradleak.defenses.parse_defense` reads back."""
    record = defense if isinstance(defense, dict) else defense.to_json()
    params = ",".join(f"{k}={v}" for k, v in record.items() if k != "name")
    return f"{record['name']}:{params}" if params else str(record["name"])


def defense_from_json(record: dict[str, Any]) -> Defense:
    """The defense a ``Defense.to_json()`` record describes."""
    return parse_defense(defense_spec(record))


@dataclass(frozen=True)
class GroundTruth:
    """The client's private batch, for scoring only."""

    images: Tensor  # [B, C, H, W] in [0, 1] (after mixup, the mixed images)
    labels: Tensor  # int64 [B]: the dominant class of each target
    targets: Tensor  # the training targets: int64 [B] or soft float [B, N]
    classes: tuple[str, ...]
    training: TrainingRecord | None = None  # the server's training before the round (train_steps > 0), for the report


def build_scenario_model(sc: Scenario, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, ModelSpec]:
    """The server's model: seeded initialisation (or the given weights), BN in the scenario's mode."""
    spec = ModelSpec(sc.model, num_classes, input_shape, dict(sc.model_kwargs))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sc.seed)
        model = spec.build()
    if sc.weights:
        load_weights(model, sc.weights)
    find_head(model, num_classes, sc.head)
    model.train(sc.bn_mode == "train")
    return model, spec


def draw_batch(
    data: Dataset,
    batch_size: int,
    *,
    generator: torch.Generator,
    unique_labels: bool,
    label_smoothing: float = 0.0,
    mixup: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A client's batch with its training targets: (images in [0, 1], dominant labels, targets)."""
    images, labels = data.sample(
        2 * batch_size if mixup else batch_size, generator=generator, unique_labels=unique_labels
    )
    targets: Tensor = labels
    if mixup:
        b = batch_size
        images, targets, _ = Mixup(mixup).mix(
            images[:b], labels[:b], images[b:], labels[b:], data.num_classes, generator=generator
        )
        labels = targets.argmax(1)
    elif label_smoothing:
        targets = LabelSmoothing(label_smoothing).targets(labels, data.num_classes)
    return images, labels, targets


def simulate(
    sc: Scenario, dataset: Dataset | None = None, model: nn.Module | None = None
) -> tuple[Observation, GroundTruth]:
    """Run one client round (or ``sc.clients`` of them, aggregated) and return what the server sees plus the
    ground truth (every client's samples, in client order).

    Without ``model`` the server's model is built from the scenario and, with ``sc.train_steps`` > 0, trained on
    the train part of the dataset; the client then draws from the held-out part
    (:func:`~gradleak.victim.split_held_out`) and ``GroundTruth.training`` records the training. A given ``model``
    is the server's model as it is, and the client draws from ``dataset`` as it is.
    """
    data = dataset if dataset is not None else load_dataset(sc.dataset, size=sc.image_size)
    train_part: Dataset | None = None
    if model is None and sc.train_steps:
        train_part, data = split_held_out(data)
    gen = torch.Generator().manual_seed(sc.seed)
    total = sc.clients * sc.batch_size
    if sc.mixup and sc.unique_labels and 2 * total > data.num_classes:
        raise InputError(
            f"mixup of {total} pairs with unique labels needs {2 * total} classes; {data.name} has {data.num_classes}"
        )
    images, labels, targets = draw_batch(
        data, total, generator=gen, unique_labels=sc.unique_labels, label_smoothing=sc.label_smoothing, mixup=sc.mixup
    )
    n_cls = data.num_classes
    spec: ModelSpec | None = None
    training: TrainingRecord | None = None
    if model is None:
        model, spec = build_scenario_model(sc, n_cls, data.image_shape)
        if train_part is not None:
            trainer = VictimTrainer(model, train_part, batch_size=sc.train_batch, lr=sc.train_lr, seed=sc.seed)
            trainer.advance(sc.train_steps)
            training = trainer.record(data)
    x = data.normalization.normalize(images)

    def one_round(strategy: ServerStrategy | None) -> Observation:
        sent, server_record, head, sent_spec = model, None, sc.head, spec
        if strategy is not None:
            sent, server_record = strategy.prepare(
                model,
                input_shape=data.image_shape,
                num_classes=n_cls,
                normalization=data.normalization,
                generator=torch.Generator().manual_seed(sc.seed + 1),
            )
            if not strategy.keeps_architecture:
                sent_spec = None  # no longer the zoo architecture: files record its hash
            head = server_record.get("head", sc.head)
        sent.train(sc.bn_mode == "train")
        updates: list[dict[str, Tensor]] = []
        defense_records: tuple[dict[str, Any], ...] = ()
        for c in range(sc.clients):
            part = slice(c * sc.batch_size, (c + 1) * sc.batch_size)
            update, defense_records = client_round(
                sent, sc.protocol, x[part], targets[part], sc.defenses, generator=gen
            )
            updates.append(update)
        aggregate, defense_records = aggregate_round(updates, defense_records, sc.defenses, generator=gen)
        return Observation(
            model=sent,
            update=aggregate,
            protocol=sc.assumed_protocol or sc.protocol,
            num_classes=n_cls,
            input_shape=data.image_shape,
            batch_size=total if sc.server_knows_batch_size else None,
            normalization=data.normalization,
            defenses=tuple(defense_records),
            head=head,
            model_spec=sent_spec,
            clients=sc.clients,
            client_batch_sizes=(sc.batch_size,) * sc.clients if sc.clients > 1 and sc.server_knows_batch_size else None,
            server=server_record,
        )

    obs = one_round(None) if sc.server is None else sc.server.observe(one_round)
    return obs, GroundTruth(images, labels, targets, data.classes, training)
