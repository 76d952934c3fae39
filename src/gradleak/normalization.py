"""Per-channel normalisation: the one place where images move between [0, 1] and model space.

Every dataset carries a :class:`Normalization`; models see ``normalize(x)``, reports and metrics see
``denormalize(x)``, and attacks clip to ``bounds()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["Normalization"]


@dataclass(frozen=True)
class Normalization:
    """``(x - mean) / std`` per channel, for images ``[..., C, H, W]`` with values in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if not mean or len(mean) != len(std):
            raise InputError(f"normalization needs one mean and one std per channel, got {mean} and {std}")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise InputError(f"normalization needs finite means and positive stds, got {mean} and {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def identity(cls, channels: int) -> Normalization:
        """No-op normalisation (mean 0, std 1) for ``channels`` channels."""
        return cls((0.0,) * channels, (1.0,) * channels)

    @classmethod
    def from_images(cls, images: Tensor) -> Normalization:
        """Per-channel mean and std of ``images`` ``[N, C, H, W]`` (population std, floored at 1e-3)."""
        if images.dim() != 4 or images.numel() == 0:
            raise InputError(f"expected a non-empty image batch [N, C, H, W], got shape {tuple(images.shape)}")
        x = images.detach().to(torch.float64).transpose(0, 1).reshape(images.shape[1], -1)
        mean = x.mean(dim=1)
        std = x.std(dim=1, unbiased=False).clamp_min(1e-3)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise InputError(
                f"normalization is for {self.channels}-channel images [..., C, H, W], got shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        """Map images in [0, 1] to model space."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Map model-space images back to [0, 1] (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(min, max)`` of a normalised image in [0, 1], each of shape ``[C, 1, 1]``."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def to_json(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Normalization:
        try:
            return cls(tuple(d["mean"]), tuple(d["std"]))
        except (KeyError, TypeError) as e:
            raise InputError(f"normalization JSON needs 'mean' and 'std' lists, got {d!r}") from e
