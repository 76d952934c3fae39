"""Defenses that transform the finished update: clipping, Gaussian and Laplace noise, per-tensor
top-k sparsification and uniform quantization. Specs: ``clip:4``, ``noise:0.01``, ``laplace:0.01``,
``sparsify:0.9``, ``quantize:8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import InputError
from ..observation import update_norm
from .base import DEFENSES, Defense, Update, require_positive

__all__ = ["Clip", "GaussianNoise", "LaplaceNoise", "Quantize", "Sparsify"]


@DEFENSES.register("clip")
@dataclass(frozen=True)
class Clip(Defense):
    """Scale the whole update so its global L2 norm is at most ``max_norm``."""

    max_norm: float
    name: ClassVar[str] = "clip"
    main: ClassVar[str] = "max_norm"

    def __post_init__(self) -> None:
        require_positive("clip max_norm", self.max_norm)

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
        require_positive("noise sigma", self.sigma)

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
        require_positive("laplace scale", self.scale)

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
        levels = 2**self.bits - 1
        out = {}
        for k, v in update.items():
            m = v.abs().max()
            if m == 0:
                out[k] = v.clone()
                continue
            step = 2 * m / levels
            out[k] = torch.round((v + m) / step) * step - m
        return out
