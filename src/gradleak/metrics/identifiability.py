"""Image Identifiability Precision (IIP) — Yin et al., "See through Gradients: Image Batch Recovery via
GradInversion", CVPR 2021, arXiv:2104.07586 (PAPERS.md §2).

PSNR rewards a blurry average; IIP asks whether a reconstruction *identifies* its original: for
each reconstruction, find its nearest neighbour in a reference set (which contains the originals
among many other images) by the cosine similarity of the model's penultimate features (the input
of the classification head); IIP is the share of reconstructions whose nearest neighbour is their
own original. Reconstructions are paired with originals first by the best assignment
(:func:`gradleak.metrics.pair_images`), as an attacker does not know their order.

Example::

    iip = image_identifiability(model, recon, reference, original_index, normalization=norm)
    iip.precision          # e.g. 0.5: half the reconstructions point at their own original
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..models import find_head
from ..normalization import Normalization
from .images import pair_images

__all__ = ["IIPResult", "image_identifiability", "penultimate_features"]


@dataclass
class IIPResult:
    """``hits[i]``: the nearest reference of the reconstruction paired with original ``i`` is that
    original; ``nearest[i]``: the index of that nearest reference."""

    hits: list[bool]
    nearest: list[int]
    order: list[int]

    @property
    def precision(self) -> float:
        return sum(self.hits) / len(self.hits)

    def to_json(self) -> dict[str, Any]:
        return {"iip": self.precision, "hits": self.hits, "nearest": self.nearest, "order": self.order}


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    images: Tensor,
    *,
    head: str | None = None,
    normalization: Normalization | None = None,
    batch: int = 64,
) -> Tensor:
    """The input of the classification head for ``images`` [N, C, H, W] in [0, 1] → [N, M].

    The model is copied and put in eval mode (BatchNorm uses its running statistics, so a sample's
    features do not depend on the rest of its batch)."""
    model = copy.deepcopy(model).eval()
    name, _ = find_head(model, None, head)
    module = dict(model.named_modules())[name]
    captured: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, inp: captured.append(inp[0].flatten(1)))
    try:
        for i in range(0, len(images), batch):
            x = images[i : i + batch].float()
            model(normalization.normalize(x) if normalization is not None else x)
    finally:
        handle.remove()
    return torch.cat(captured)


def image_identifiability(
    model: nn.Module,
    recon: Tensor,
    reference: Tensor,
    original_index: Sequence[int],
    *,
    head: str | None = None,
    normalization: Normalization | None = None,
) -> IIPResult:
    """IIP of ``recon`` [B', C, H, W] (in [0, 1], any order) against ``reference`` [N, C, H, W] in
    [0, 1], where ``reference[original_index[i]]`` is the client's i-th original image."""
    originals = reference[list(original_index)]
    if len(set(int(i) for i in original_index)) != len(original_index):
        raise InputError("original_index must name distinct reference images")
    order = pair_images(recon, originals)
    feats_ref = F.normalize(penultimate_features(model, reference, head=head, normalization=normalization), dim=1)
    feats_rec = F.normalize(
        penultimate_features(model, recon.clamp(0, 1)[order], head=head, normalization=normalization), dim=1
    )
    nearest = (feats_rec @ feats_ref.T).argmax(1).tolist()
    hits = [n == int(i) for n, i in zip(nearest, original_index)]
    return IIPResult(hits, nearest, order)
