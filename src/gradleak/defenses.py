"""Defenses: pure ``Update -> Update`` transforms applied by the client before the server sees the
update, and client-side label augmentations (label smoothing, mixup) that change the training targets.

Each defense checks its arguments at construction, records its parameters (``to_json``) in the
Observation, and draws randomness only from the ``torch.Generator`` it is given. Spec strings for
the CLI: ``name`` or ``name:VALUE`` (the main parameter) or ``name:key=value,key=value``, e.g.
``clip:4``, ``noise:0.01``, ``sparsify:0.9``, ``quantize:8``.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .errors import InputError
from .observation import update_norm
from .registry import Registry

Update = dict[str, Tensor]
DEFENSES: Registry = Registry("defense")


class Defense:
    """Base: subclasses are frozen dataclasses; ``main`` names the field a bare ``name:VALUE`` sets."""

    name: ClassVar[str]
    main: ClassVar[str]

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{name} must be a positive number, got {value}")


@DEFENSES.register("clip")
@dataclass(frozen=True)
class Clip(Defense):
    """Scale the whole update so its global L2 norm is at most ``max_norm``."""

    max_norm: float
    name: ClassVar[str] = "clip"
    main: ClassVar[str] = "max_norm"

    def __post_init__(self) -> None:
        _positive("clip max_norm", self.max_norm)

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        factor = min(1.0, self.max_norm / (update_norm(update) + 1e-12))
        return {k: v * factor for k, v in update.items()}


def _noise_like(v: Tensor, generator: torch.Generator, kind: str) -> Tensor:
    if kind == "gaussian":
        return torch.randn(v.shape, generator=generator, dtype=v.dtype)
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)


@DEFENSES.register("noise")
@dataclass(frozen=True)
class GaussianNoise(Defense):
    """Add i.i.d. N(0, σ²) to every entry (GGL's "noise" defense)."""

    sigma: float
    name: ClassVar[str] = "noise"
    main: ClassVar[str] = "sigma"

    def __post_init__(self) -> None:
        _positive("noise sigma", self.sigma)

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        return {k: v + self.sigma * _noise_like(v, generator, "gaussian") for k, v in update.items()}


@DEFENSES.register("laplace")
@dataclass(frozen=True)
class LaplaceNoise(Defense):
    """Add i.i.d. Laplace(0, b) noise to every entry."""

    scale: float
    name: ClassVar[str] = "laplace"
    main: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        _positive("laplace scale", self.scale)

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        return {k: v + self.scale * _noise_like(v, generator, "laplace") for k, v in update.items()}


@DEFENSES.register("sparsify")
@dataclass(frozen=True)
class Sparsify(Defense):
    """Top-k sparsification per tensor: zero the ``ratio`` fraction of entries of smallest magnitude."""

    ratio: float
    name: ClassVar[str] = "sparsify"
    main: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise InputError(f"sparsify ratio is the fraction pruned, in [0, 1); got {self.ratio}")

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        out = {}
        for k, v in update.items():
            keep = max(1, int(round(v.numel() * (1 - self.ratio))))
            flat = v.flatten()
            idx = flat.abs().topk(keep).indices
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[idx] = True
            out[k] = (flat * mask).view_as(v)
        return out


@DEFENSES.register("quantize")
@dataclass(frozen=True)
class Quantize(Defense):
    """Uniform per-tensor quantization to ``bits`` bits on [−max|v|, max|v|] (round to nearest)."""

    bits: int
    name: ClassVar[str] = "quantize"
    main: ClassVar[str] = "bits"

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 16):
            raise InputError(f"quantize bits must be an integer in 1..16, got {self.bits}")

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        levels = 2 ** self.bits - 1
        out = {}
        for k, v in update.items():
            m = v.abs().max()
            if m == 0:
                out[k] = v.clone()
                continue
            step = 2 * m / levels
            out[k] = torch.round((v + m) / step) * step - m
        return out


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


# -- client-side label augmentation -----------------------------------------------------------------

@dataclass(frozen=True)
class LabelSmoothing:
    """Soft targets ``(1 − ε) onehot(y) + ε/N`` (Szegedy et al. 2016)."""

    epsilon: float

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon < 1:
            raise InputError(f"label smoothing epsilon must be in [0, 1), got {self.epsilon}")

    def targets(self, labels: Tensor, num_classes: int) -> Tensor:
        onehot = torch.nn.functional.one_hot(labels, num_classes).float()
        return (1 - self.epsilon) * onehot + self.epsilon / num_classes


@dataclass(frozen=True)
class Mixup:
    """Mixup (Zhang et al. 2018): ``x = λ x_a + (1 − λ) x_b``, ``y = λ y_a + (1 − λ) y_b``,
    ``λ ~ Beta(α, α)``, one λ per mixed sample."""

    alpha: float

    def __post_init__(self) -> None:
        _positive("mixup alpha", self.alpha)

    def mix(self, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, num_classes: int,
            *, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Mix pairs; returns (inputs, soft targets, λ per sample)."""
        u = torch.rand(xa.shape[0], generator=generator, dtype=torch.float64)
        lam = torch.tensor(_beta_ppf(u.tolist(), self.alpha), dtype=xa.dtype)
        l4 = lam.view(-1, *([1] * (xa.dim() - 1)))
        onehot = torch.nn.functional.one_hot
        y = lam[:, None] * onehot(ya, num_classes).float() + (1 - lam[:, None]) * onehot(yb, num_classes).float()
        return l4 * xa + (1 - l4) * xb, y, lam


def _beta_ppf(u: list[float], alpha: float) -> list[float]:
    from scipy.stats import beta

    return [float(v) for v in beta.ppf(u, alpha, alpha)]


from . import defenses_extra as _extra  # noqa: E402,F401  (registers dpsgd, soteria, compress)
