"""Soteria: a batch defense that prunes the head's gradient where its input reveals the images most."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from .base import DEFENSES, BatchDefense, Update

__all__ = ["Soteria", "head_input_and_sensitivity"]


def head_input_and_sensitivity(model: nn.Module, layer: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The defended layer's input ``r`` [B, M] and ``‖∂r_bf/∂x_b‖`` [B, M] (one batched VJP per feature)."""
    net = copy.deepcopy(model)
    module = dict(net.named_modules())[layer]
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    xi = x.detach().clone().requires_grad_(True)
    try:
        net(xi)
    finally:
        handle.remove()
    r = captured[0].flatten(1)  # [B, M]
    m = r.shape[1]
    eye = torch.eye(m, dtype=r.dtype).unsqueeze(1).expand(m, r.shape[0], m)  # [M, B, M]
    (jac,) = torch.autograd.grad(r, xi, grad_outputs=eye, is_grads_batched=True)  # [M, B, ...]
    sens = jac.flatten(2).norm(dim=2).T  # [B, M]
    return r.detach(), sens.detach()


@DEFENSES.register("soteria")
@dataclass(frozen=True)
class Soteria(BatchDefense):
    """Soteria: prune the defended layer's gradient where the representation is most input-revealing.

    Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning from
    Representation Perspective", CVPR 2021, arXiv:2012.06043. For every input feature ``f`` of the
    defended fully connected layer (the classification head, found by name), the client computes
    ``s_f = Σ_b ‖∂r_bf/∂x_b‖ / |r_bf|`` — the inverse of the input perturbation norm ``|r_f| / ‖∇_x r_f‖``
    that removes feature ``f`` (the paper's ratio of feature-perturbation norms) — and zeroes the
    gradient columns of the ``ratio`` fraction of features with the smallest ``s_f`` (largest
    perturbation). Other layers' updates pass unchanged: attacks that use them are not stopped (the
    paper's guarantee covers the defended layer only). Spec: ``soteria:0.8``.
    """

    ratio: float
    name: ClassVar[str] = "soteria"
    main: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise InputError(f"soteria ratio is the fraction of features pruned, in [0, 1); got {self.ratio}")

    def mask(self, model: nn.Module, x: Tensor) -> tuple[str, Tensor]:
        """The defended layer's name and the keep-mask over its input features (bool [M])."""
        from ..models import find_head

        name, _ = find_head(model)
        r, sens = head_input_and_sensitivity(model, name, x)
        with torch.no_grad():
            score = (sens / r.abs()).nan_to_num(nan=math.inf, posinf=math.inf).sum(0)  # dead features: inf
        k = int(math.floor(self.ratio * score.numel()))
        keep = torch.ones(score.numel(), dtype=torch.bool)
        if k:
            keep[score.argsort()[:k]] = False
        return name, keep

    def transform(
        self, update: Update, *, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Update:
        name, keep = self.mask(model, x)
        out = dict(update)
        w = f"{name}.weight"
        if out[w].shape[1] != keep.numel():
            raise InputError(
                f"soteria: layer {name!r} takes {out[w].shape[1]} inputs but its input had {keep.numel()} features"
            )
        out[w] = out[w] * keep.to(out[w].dtype)
        return out
