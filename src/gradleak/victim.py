"""The server's model before the audited round: trained on data disjoint from the client's batch.

A trained victim (``Scenario(train_steps=N)``) is trained with seeded SGD (momentum 0.9, BatchNorm in train mode,
so its running statistics follow the data) on the train part of the dataset, and the client draws its batch from
the held-out part (:func:`split_held_out`: every class's images alternate between the two parts), so the audited
images were never trained on. :class:`VictimTrainer` continues a training where it stopped — training to 100 and
then to 1000 steps gives the model that 1000 steps at once give — which is how the audit runs at several
checkpoints of one training (:mod:`gradleak.over_training`). :class:`TrainingRecord` keeps the steps, the settings
and the model's accuracy on both parts.

Training runs on one torch thread, whatever the process uses: the order of floating-point sums depends on the thread
count, and over hundreds of SGD steps such differences grow into different models (the same seeded ConvNet reached a
held-out accuracy of 0.75 after 100 steps at 2 threads and 0.65 at 1). On one thread a seed gives one model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .errors import InputError
from .protocols import cross_entropy

__all__ = ["MOMENTUM", "TrainingRecord", "VictimTrainer", "evaluate", "split_held_out"]

MOMENTUM = 0.9


def split_held_out(data: Dataset) -> tuple[Dataset, Dataset]:
    """``(train part, held-out part)``: every class's images alternate between the two (its first, third, …
    image to training, in dataset order), so a trained model is never audited on an image it was trained on."""
    train_idx: list[int] = []
    held_idx: list[int] = []
    for c in torch.unique(data.labels).tolist():
        members = torch.nonzero(data.labels == c).flatten().tolist()
        train_idx += members[0::2]
        held_idx += members[1::2]
    if not held_idx:
        raise InputError(f"dataset {data.name!r} has one image per class: nothing is left to hold out from training")
    train = data.subset(torch.tensor(sorted(train_idx)))
    held = data.subset(torch.tensor(sorted(held_idx)))
    return dataclasses.replace(train, name=f"{data.name} (train part)"), dataclasses.replace(
        held, name=f"{data.name} (held-out part)"
    )


def evaluate(model: nn.Module, data: Dataset, chunk: int = 256) -> dict[str, float]:
    """``loss`` (mean cross-entropy) and top-1 ``accuracy`` of ``model`` in eval mode (BatchNorm on its running
    statistics) on ``data``; the model's mode is restored."""
    mode = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), chunk):
            logits = model(data.normalization.normalize(data.images[i : i + chunk]))
            labels = data.labels[i : i + chunk]
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
    model.train(mode)
    return {"loss": loss / len(data), "accuracy": correct / len(data)}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread and restore the thread count after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainingRecord:
    """How the server's model was trained before the audited round, and how well it classifies."""

    steps: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    train_images: int
    held_out_images: int
    train_accuracy: float
    test_accuracy: float  # on the held-out part, which the client's batch comes from
    final_loss: float | None  # the last training step's batch loss (None before any step)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VictimTrainer:
    """Seeded SGD on ``train`` (mini-batches of ``batch_size`` drawn with replacement), continued by
    :meth:`advance`. The model is trained in place, in train mode; its mode is restored after each advance."""

    def __init__(self, model: nn.Module, train: Dataset, *, batch_size: int = 32, lr: float = 0.01, seed: int = 0):
        if batch_size < 2:
            raise InputError(f"the training batch must hold at least 2 images (BatchNorm), got {batch_size}")
        if not lr > 0:
            raise InputError(f"the training learning rate must be > 0, got {lr}")
        self.model, self.train, self.batch_size, self.lr, self.seed = model, train, batch_size, lr, seed
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs = train.normalization.normalize(train.images)
        self.steps = 0
        self.seconds = 0.0
        self.loss: float | None = None

    def advance(self, steps: int) -> None:
        """Train until ``steps`` steps in all have been taken (on one torch thread, so a seed gives one model)."""
        if steps < self.steps:
            raise InputError(f"the model is already trained for {self.steps} steps; cannot go back to {steps}")
        t0 = time.perf_counter()
        mode = self.model.training
        self.model.train()
        with one_thread():
            for _ in range(steps - self.steps):
                idx = torch.randint(len(self.train), (self.batch_size,), generator=self.generator)
                self.optimizer.zero_grad()
                loss = cross_entropy(self.model(self.inputs[idx]), self.train.labels[idx])
                loss.backward()
                self.optimizer.step()
                self.loss = float(loss.detach())
        self.model.train(mode)
        self.steps = steps
        self.seconds += time.perf_counter() - t0

    def record(self, held_out: Dataset) -> TrainingRecord:
        """The training so far, with the model's accuracy on the train part and on ``held_out``."""
        return TrainingRecord(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=MOMENTUM,
            seed=self.seed,
            train_images=len(self.train),
            held_out_images=len(held_out),
            train_accuracy=evaluate(self.model, self.train)["accuracy"],
            test_accuracy=evaluate(self.model, held_out)["accuracy"],
            final_loss=self.loss,
            seconds=self.seconds,
        )
