"""The imprint block of "Robbing the Fed" — Fowl, Geiping, Czaja, Goldblum & Goldstein, "Robbing the Fed: Directly
Obtaining Private Data in Federated Learning with Modified Models", ICLR 2022 (arXiv:2110.13057). PAPERS.md §7.

The server puts a block in front of the model: ``K`` ReLU units share one linear measurement ``h(x) = ⟨w, x⟩`` of the
(normalised) input and differ only in their thresholds, ``unit_i(x) = ReLU(gain · (h(x) − c_i))``; a second linear
layer maps the ``K`` units back to the input's shape with equal weights, so every unit receives the same upstream
gradient per sample and the rest of the model runs unchanged. Unit ``i`` fires iff ``h(x) > c_i``, so the gradients
of two neighbouring units differ by exactly the samples whose measurement falls between their thresholds
(:mod:`gradleak.attacks.analytic.imprint` recovers those alone in their bin).

The thresholds are the ``i/K`` quantiles of the law the server assumes for ``h`` on normalised inputs, so each bin
holds a sample with probability ``1/K``: ``c_0`` stands in for −∞ (−10 × ``scale``), ``c_i = scale · F⁻¹(i/K)``.

Defaults are those of breaching's ``malicious-model-rtf`` case (the paper's code): 64 bins, measurement ``fourier``
mode 32, gain 1. Measurements and the law assumed for each (breaching's choices):

- ``fourier``: the DCT-II basis vector ``mode`` over the flattened input, ``w_k = 4·max(mode, 0.33)/d ·
  cos(π/d · (k + ½) · mode)`` (breaching's normalisation; mode 0 is 1.32 × the mean); law Laplace(0, 1/√2);
- ``avg``: the mean of the input, ``w = 1/d``; law N(0, 1);
- ``randn``: a random direction (drawn from the strategy's generator) scaled to ``‖w‖ = 1``; law N(0, 1).

``scale`` multiplies the assumed law (1: breaching's unit-variance laws). A server that knows the spread of ``h`` on
data like the clients' (e.g. from public data) sets it to that standard deviation; bins of equal mass under the true
law isolate the most samples.

Deviations from breaching's block: the map back to the input shape has weights ``1/(gain·K)`` instead of
``1/gain``, so the block's output (a constant image ``mean_i ReLU(h − c_i)``) stays of order one for the rest of
the model whatever ``K`` is — with ``1/gain`` it grows with ``K`` and saturates the softmax, and samples whose
saturated prediction is right get a zero gradient and are lost; all units still share one upstream gradient. The
block is always placed in front of the whole model (breaching's default ``position``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..models import find_head
from ..normalization import Normalization
from .base import ServerStrategy, server

MEASUREMENTS = ("fourier", "avg", "randn")
LOW_THRESHOLD = -10.0  # c_0, breaching's stand-in for −∞ (in units of the law's scale)


@dataclass(frozen=True, kw_only=True)
class ImprintConfig:
    """``bins`` ReLU units (K); ``measurement`` and ``mode`` choose ``h`` (``mode`` is the DCT-II mode of
    ``fourier``); ``gain`` scales the first layer (and ``1/gain`` the second), ``scale`` the assumed law of ``h``."""

    bins: int = 64
    measurement: str = "fourier"
    mode: int = 32
    gain: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.measurement not in MEASUREMENTS:
            raise InputError(f"imprint: measurement must be one of {MEASUREMENTS}, got {self.measurement!r}")
        if self.mode < 0:
            raise InputError(f"imprint: mode must be >= 0, got {self.mode}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise InputError(f"imprint: gain must be a positive number, got {self.gain}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"imprint: scale must be a positive number, got {self.scale}")


def quantile(measurement: str, p: float) -> float:
    """The ``p`` quantile of the unit law assumed for ``measurement``: Laplace(0, 1/√2) for fourier, else N(0, 1)."""
    if measurement == "fourier":
        b = 1 / math.sqrt(2)
        return b * math.log(2 * p) if p < 0.5 else -b * math.log(2 - 2 * p)
    return NormalDist().inv_cdf(p)


def thresholds(cfg: ImprintConfig) -> Tensor:
    """``c_0 < c_1 < … < c_{K−1}`` (float64): the bins' lower edges, equal mass ``1/K`` each under the assumed law."""
    inner = [quantile(cfg.measurement, i / cfg.bins) for i in range(1, cfg.bins)]
    return cfg.scale * torch.tensor([LOW_THRESHOLD, *inner], dtype=torch.float64)


def measurement_vector(cfg: ImprintConfig, d: int, generator: torch.Generator) -> Tensor:
    """``w`` (float64, length ``d``) of ``h(x) = ⟨w, x⟩`` on the flattened normalised input."""
    if cfg.measurement == "avg":
        return torch.full((d,), 1 / d, dtype=torch.float64)
    if cfg.measurement == "randn":
        w = torch.randn(d, generator=generator, dtype=torch.float64)
        return w / w.norm()
    k = torch.arange(d, dtype=torch.float64)
    return torch.cos(math.pi / d * (k + 0.5) * cfg.mode) * (4 * max(cfg.mode, 0.33) / d)


class ImprintBlock(nn.Module):
    """``Linear(d, K)`` + ReLU (``bins``), then ``Linear(K, d)`` (``back``) reshaped to the input's shape."""

    def __init__(self, input_shape: tuple[int, ...], bins: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        d = math.prod(self.input_shape)
        self.bins = nn.Linear(d, bins)
        self.back = nn.Linear(bins, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.back(torch.relu(self.bins(x.flatten(1)))).unflatten(1, self.input_shape)


class Imprinted(nn.Module):
    """The model the server sends: ``model(imprint(x))``; ``head_name`` names the inner model's head."""

    def __init__(self, imprint: ImprintBlock, model: nn.Module, head_name: str):
        super().__init__()
        self.imprint = imprint
        self.model = model
        self.head_name = head_name

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.imprint(x))


@server("imprint")
class Imprint(ServerStrategy):
    """Insert an imprint block in front of the model (Fowl et al. ICLR 2022). Settings: :class:`ImprintConfig`
    (breaching's ``malicious-model-rtf`` defaults); the recovery is the ``imprint`` attack."""

    paper = "Fowl, Geiping, Czaja, Goldblum & Goldstein, ICLR 2022 (arXiv:2110.13057), Robbing the Fed"
    Config = ImprintConfig
    keeps_architecture = False

    def problems(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
        problems: list[str] = []
        if not input_shape or not all(isinstance(s, int) and s > 0 for s in input_shape):
            problems.append(f"the input shape must be known to size the block, got {input_shape!r}")
        if self.config.bins < 2:
            problems.append(f"an imprint block needs at least 2 bins, got {self.config.bins}")
        if not any(p.is_floating_point() for p in model.parameters()):
            problems.append("the model has no floating-point parameters to take the block's dtype from")
        try:
            find_head(model, num_classes)
        except InputError as e:
            problems.append(f"the model's head must be known to name it in the modified model: {e}")
        return problems

    def modify(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalization: Normalization | None,
        generator: torch.Generator,
    ) -> tuple[nn.Module, dict[str, Any]]:
        cfg = self.config
        ref = next(p for p in model.parameters() if p.is_floating_point())
        block = ImprintBlock(input_shape, cfg.bins).to(device=ref.device, dtype=ref.dtype)
        w = measurement_vector(cfg, block.bins.in_features, generator)
        c = thresholds(cfg)
        with torch.no_grad():
            block.bins.weight.copy_(cfg.gain * w.expand(cfg.bins, -1))
            block.bins.bias.copy_(-cfg.gain * c)
            block.back.weight.fill_(1 / (cfg.gain * cfg.bins))
            block.back.bias.zero_()
        head, _ = find_head(model, num_classes)
        sent = Imprinted(block, copy.deepcopy(model), f"model.{head}")
        sent.train(model.training)
        record = {
            **self.to_json(),
            "head": f"model.{head}",
            "weight": "imprint.bins.weight",
            "bias": "imprint.bins.bias",
            "structure": "cumulative",  # unit i fires iff h(x) > c_i; c_i ascending with i
            "law": ("Laplace(0, 1/√2)" if cfg.measurement == "fourier" else "N(0, 1)") + f" × {cfg.scale:g}",
        }
        return sent, record
