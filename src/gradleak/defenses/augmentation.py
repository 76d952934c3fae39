"""Client-side label augmentations: they change the training targets (and for mixup the inputs)
before the client computes its update, rather than transforming the update."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .base import require_positive

__all__ = ["LabelSmoothing", "Mixup"]


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
        require_positive("mixup alpha", self.alpha)

    def mix(
        self, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, num_classes: int, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
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
