"""The defense registry, the :class:`Defense` base classes and the spec parser.

A :class:`Defense` is a pure ``Update -> Update`` transform the client applies before the server sees
the update. Two kinds need more than the update, so they are not plain transforms:

- a :class:`TrainingDefense` *replaces* the client's local training (DP-SGD clips every example's
  gradient and adds noise inside each local step, so it cannot be applied to a finished update);
- a :class:`BatchDefense` transforms the finished update but needs the client's model and batch
  (Soteria measures how the defended layer's input depends on the images).

:func:`gradleak.client.client_round` runs a client's round with all three kinds. Each defense checks
its arguments at construction, records its parameters (``to_json``) in the Observation, and draws
randomness only from the ``torch.Generator`` it is given. Spec strings for the CLI: ``name`` or
``name:VALUE`` (the main parameter) or ``name:key=value,key=value``, e.g. ``clip:4``, ``noise:0.01``,
``sparsify:0.9``, ``quantize:8``, ``dpsgd:noise=1.0,clip=1.0``, ``soteria:0.8``.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..protocols import Protocol
from ..registry import Registry

__all__ = ["DEFENSES", "BatchDefense", "Defense", "TrainingDefense", "Update", "parse_defense", "require_positive"]

Update = dict[str, Tensor]
DEFENSES: Registry[type[Defense]] = Registry("defense")


class Defense:
    """Base: subclasses are frozen dataclasses; ``main`` names the field a bare ``name:VALUE`` sets."""

    name: ClassVar[str]
    main: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # declared for type checkers: subclasses are dataclasses

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


class TrainingDefense(Defense):
    """A defense that changes how the client trains; it produces the update instead of transforming it."""

    def train(
        self, model: nn.Module, protocol: Protocol, x: Tensor, y: Tensor, *, generator: torch.Generator
    ) -> tuple[Update, dict[str, Any]]:
        """The client's defended update for batch ``(x, y)`` and the record to store (e.g. ε spent)."""
        raise NotImplementedError

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise InputError(
            f"{self.name} changes the client's training and cannot transform a finished update; "
            "run the round through gradleak.client.client_round"
        )


class BatchDefense(Defense):
    """A transform of the finished update that also reads the client's model and batch."""

    def transform(
        self, update: Update, *, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Update:
        raise NotImplementedError

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise InputError(
            f"{self.name} needs the client's model and batch; run the round through gradleak.client.client_round"
        )


def require_positive(name: str, value: float) -> None:
    """Raise :class:`InputError` unless ``value`` is a positive finite number."""
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{name} must be a positive number, got {value}")


def parse_defense(spec: str) -> Defense:
    """Build a defense from a spec string such as ``clip:4`` or ``noise:sigma=0.01``."""
    name, _, rest = spec.strip().partition(":")
    cls = DEFENSES.get(name)
    types = {f.name: f.type for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = cls.main, part
        if key not in types:
            raise InputError(f"defense {name!r} has no parameter {key!r}; it takes {sorted(types)}")
        try:
            kwargs[key] = int(value) if types[key] in ("int", int) else float(value)
        except ValueError:
            raise InputError(f"defense {name!r}: {key}={value!r} is not a number") from None
    missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is MISSING]
    if missing:
        raise InputError(f"defense {name!r} needs {missing} (e.g. '{name}:VALUE')")
    return cls(**kwargs)
