"""The attack interface: a registry of attacks taking an Observation (and recovered labels) and
returning an :class:`AttackResult`. Attacks never print, write files or see the ground truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..errors import UnsupportedError
from ..labels.base import LabelResult
from ..observation import Observation
from ..registry import Registry
from ..settings import configure
from .matching import MatchingConfig, candidate_phases
from .steps import StepCallback, no_progress

ATTACKS: Registry[type[Attack]] = Registry("attack")
A = TypeVar("A", bound="type[Attack]")


def attack(name: str) -> Callable[[A], A]:
    """Class decorator registering an :class:`Attack` under ``name``."""

    def add(cls: A) -> A:
        cls.name = name
        ATTACKS.register(name)(cls)
        return cls

    return add


@dataclass
class AttackResult:
    """Reconstructed images (in [0, 1], any order) and how they were obtained."""

    name: str
    images: Tensor  # [B, C, H, W] in [0, 1]
    iterations: int
    seconds: float
    final_loss: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    labels: list[int] | None = None  # labels the attack used or recovered
    restarts: int = 1
    best_restart: int = 0
    stages: dict[str, Tensor] = field(default_factory=dict)  # intermediate outputs worth showing
    assumptions: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "final_loss": self.final_loss,
            "loss_curve": [list(p) for p in self.loss_curve],
            "labels": self.labels,
            "restarts": self.restarts,
            "best_restart": self.best_restart,
            "assumptions": self.assumptions,
            "config": self.config,
        }


class Attack:
    """Base: ``Config`` is a frozen dataclass with the paper's defaults; ``run`` does the work."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any):
        self.config = configure(self.Config, config, overrides, f"attack {self.name!r}")

    def problems(self, obs: Observation) -> list[str]:
        return []

    def check(self, obs: Observation) -> None:
        problems = self.problems(obs)
        if problems:
            raise UnsupportedError(self.name, problems)

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        raise NotImplementedError

    def cost_units(self) -> list[tuple[int, int]] | None:
        """The phases of a run with these settings, each (matching steps, candidate batches per step), for
        :mod:`gradleak.cost`; ``None`` for attacks that run no gradient matching."""
        iterations = getattr(self.config, "iterations", None)
        if iterations is None:
            return None
        restarts = int(getattr(self.config, "restarts", 1))
        prune_at = tuple(getattr(self.config, "prune_at", ()))
        if not prune_at:
            return [(int(iterations), restarts)]
        return candidate_phases(MatchingConfig(iterations=int(iterations), restarts=restarts, prune_at=prune_at))

    def config_json(self) -> dict[str, Any]:
        if not is_dataclass(self.config) or isinstance(self.config, type):
            return {}
        return json.loads(json.dumps(asdict(self.config), default=str))  # JSON types: tuples become lists
