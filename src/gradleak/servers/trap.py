"""Trap weights — Boenisch, Dziedzic, Schuster, Shamsabadi, Shumailov & Papernot, "When the Curious Abandon
Honesty: Federated Learning Is Not Private", IEEE EuroS&P 2023, arXiv:2112.02918. See PAPERS.md §8.

The server changes only the weights of the model's first fully connected layer (no new layer): every row
gets half of its inputs drawn negative, ``−|N(0, σ²)|``, and the other half the same magnitudes times
``s < 1``, positive; the bias is ``μ``. On non-negative inputs the pre-activation is then negative on average,
so behind the ReLU each unit fires for few samples of a batch, and a unit that one sample alone fires gives
that sample exactly as ``∂L/∂W_i / ∂L/∂b_i`` (:mod:`gradleak.attacks.analytic.trap`). Defaults σ = 0.5,
s = 0.95, μ = 0, as in the reference framework (breaching, ``CuriousAbandonHonesty``).

The paper's inputs are pixels in [0, 1]; gradleak's models see normalised inputs ``(x − mean) / std`` (mean
about 0), on which the trap would fire for about half the samples. The server knows the normalisation and
folds it into the layer: with the trap ``(W, μ)`` meant for pixels it sends ``W · diag(std)`` and
``μ + W · mean``, which on the normalised input computes exactly ``W x + μ`` on the pixels ``x``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..models import input_linear
from ..normalization import Normalization
from .base import ServerStrategy, server


@dataclass(frozen=True, kw_only=True)
class TrapConfig:
    """``sigma``: std of the weight magnitudes; ``scale``: the factor s < 1 on the positive half; ``mu``: the
    bias (the paper's and breaching's defaults)."""

    sigma: float = 0.5
    scale: float = 0.95
    mu: float = 0.0

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise InputError(f"trap: sigma must be a positive number, got {self.sigma}")
        if not 0 <= self.scale <= 1:
            raise InputError(f"trap: scale must be in [0, 1], got {self.scale}")
        if not math.isfinite(self.mu):
            raise InputError(f"trap: mu must be finite, got {self.mu}")


def trap_weights(rows: int, inputs: int, cfg: TrapConfig, generator: torch.Generator) -> Tensor:
    """[rows, inputs] trap weights for inputs in [0, 1]: per row a random half ``−|N(0, σ²)|``, the other half
    the same magnitudes times ``s`` (for an odd input count the one input left over gets 0)."""
    half = inputs // 2
    order = torch.rand(rows, inputs, generator=generator).argsort(dim=1)
    magnitude = torch.randn(rows, half, generator=generator).abs() * cfg.sigma
    w = torch.zeros(rows, inputs)
    w.scatter_(1, order[:, :half], -magnitude)
    w.scatter_(1, order[:, half : 2 * half], cfg.scale * magnitude)
    return w


def fold_normalization(
    w: Tensor, bias: Tensor, norm: Normalization, input_shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """The weights and bias that compute ``w x + bias`` on pixels ``x`` when fed ``norm.normalize(x)``."""
    per_channel = math.prod(input_shape[1:])
    mean = torch.tensor(norm.mean, dtype=torch.float64).repeat_interleave(per_channel)
    std = torch.tensor(norm.std, dtype=torch.float64).repeat_interleave(per_channel)
    w64 = w.double()
    return (w64 * std).to(w.dtype), (bias.double() + w64 @ mean).to(bias.dtype)


@server("trap")
class TrapWeights(ServerStrategy):
    """Trap weights in the model's first fully connected layer (only weights change, not the architecture).

    Paper: Boenisch et al. IEEE EuroS&P 2023. Needs: the model's first layer is an ``nn.Linear`` with bias
    that receives the (flattened) input and feeds an ``nn.ReLU`` (the zoo ``mlp``). Settings: :class:`TrapConfig`.
    The record names the layer; the recovery is the ``trap`` attack."""

    paper = "Boenisch et al. IEEE EuroS&P 2023, arXiv:2112.02918"
    Config = TrapConfig

    def problems(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
        return input_linear(model, input_shape)[1]

    def modify(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalization: Normalization | None,
        generator: torch.Generator,
    ) -> tuple[nn.Module, dict[str, Any]]:
        name, _ = input_linear(model, input_shape)
        sent = copy.deepcopy(model)
        layer = sent.get_submodule(str(name))
        assert isinstance(layer, nn.Linear) and layer.bias is not None  # input_linear checked both
        w = trap_weights(layer.out_features, layer.in_features, self.config, generator)
        b = torch.full((layer.out_features,), self.config.mu)
        if normalization is not None:
            w, b = fold_normalization(w, b, normalization, input_shape)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        folded = normalization is not None
        return sent, {**self.to_json(), "layer": name, "rows": layer.out_features, "normalization_folded": folded}
