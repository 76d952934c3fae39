"""The label-recovery interface: a registry of methods taking an Observation, returning a LabelResult."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..errors import UnsupportedError
from ..observation import Observation
from ..registry import Registry
from ..settings import NoSettings, configure

LABEL_METHODS: Registry[type[LabelMethod]] = Registry("label method")
M = TypeVar("M", bound="type[LabelMethod]")


def label_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`LabelMethod` under ``name``."""

    def add(cls: M) -> M:
        cls.name = name
        LABEL_METHODS.register(name)(cls)
        return cls

    return add


@dataclass
class LabelResult:
    """Recovered labels: a multiset of hard labels, optionally soft labels and last-layer features."""

    method: str
    labels: list[int]
    soft: Tensor | None = None  # [B, N] recovered soft labels (augmented-label methods)
    features: Tensor | None = None  # [B, M] recovered last-layer inputs, if the method gives them
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "recovered": list(map(int, self.labels)),
            "soft": None if self.soft is None else self.soft.tolist(),
            "seconds": self.seconds,
            "details": self.details,
        }


class LabelMethod:
    """Base: subclasses set ``paper`` (and ``Config``, a frozen dataclass of settings, if they have any) and
    implement :meth:`problems` and :meth:`recover`. Constructed as ``Method(config=None, **overrides)``."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoSettings

    def __init__(self, config: Any = None, **overrides: Any):
        self.config = configure(self.Config, config, overrides, f"label method {self.name!r}")

    def problems(self, obs: Observation) -> list[str]:
        """Every unmet assumption of this method on ``obs`` (empty if it can run)."""
        return []

    def check(self, obs: Observation) -> None:
        problems = self.problems(obs)
        if problems:
            raise UnsupportedError(self.name, problems)

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        """The labels; ``generator`` seeds any dummy inputs the method draws (default: its ``seed`` setting)."""
        raise NotImplementedError


def head_gradient(obs: Observation) -> tuple[Tensor, Tensor | None]:
    """The head's weight/bias gradient, or for a FedAvg delta its gradient-like ``−delta``
    (a sum of local gradients times the local rate: signs and orderings survive)."""
    w, b = obs.head_grads()
    if obs.kind == "delta":
        return -w, None if b is None else -b
    return w, b


def need_batch_size(obs: Observation, problems: list[str]) -> int:
    if obs.batch_size is None:
        problems.append("the batch size is unknown to the server (this method needs it)")
        return 0
    return obs.batch_size
