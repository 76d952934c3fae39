"""Candidate identification: the measure of success that the DP reconstruction bound applies to.

The prior of the bound (:mod:`gradleak.defenses.bounds`) is a finite set of equally likely candidates: for each of
the client's images, the image itself and ``K − 1`` decoys drawn at random from the same data (never one equal to a
client image). The adversary names the candidate nearest (pixel MSE) to any of the attack's reconstructions and
succeeds when it names the client's image. Guessing succeeds with probability κ = 1/K; under a DP defense no attack
succeeds more often than ``reconstruction_bound(κ, ...)``, in expectation over the draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["candidate_success", "draw_decoys"]


def draw_decoys(pool: Tensor, truth: Tensor, count: int, *, generator: torch.Generator) -> Tensor:
    """Indices into ``pool`` ``[N, C, H, W]`` of ``count`` decoys for each image of ``truth`` ``[B, C, H, W]``: drawn
    without replacement from the pool's images that equal no truth image, ``[B, count]`` (``pool[index]`` are the
    decoy images)."""
    if count < 1:
        raise InputError(f"need at least one decoy per image, got {count}")
    flat = pool.flatten(1)
    free = torch.ones(len(flat), dtype=torch.bool)
    for image in truth.flatten(1).to(flat.dtype):
        free &= ~(flat == image).all(1)
    index = torch.nonzero(free).flatten()
    if len(index) < count:
        raise InputError(
            f"{count} decoys per image need {count} images besides the client's; the pool has {len(index)}"
        )
    return torch.stack([index[torch.randperm(len(index), generator=generator)[:count]] for _ in range(len(truth))])


def candidate_success(recon: Tensor, truth: Tensor, decoys: Tensor) -> list[bool]:
    """For each image of ``truth`` ``[B, C, H, W]``: is it, among itself and its ``decoys`` ``[B, K−1, C, H, W]``, the
    candidate nearest (pixel MSE) to one of the reconstructions ``recon`` ``[R, C, H, W]``? Ties count as failures."""
    if decoys.dim() != 5 or decoys.shape[0] != truth.shape[0] or decoys.shape[2:] != truth.shape[1:]:
        raise InputError(f"decoys must be [B, K-1, C, H, W] for truth {tuple(truth.shape)}, got {tuple(decoys.shape)}")
    if recon.shape[1:] != truth.shape[1:]:
        raise InputError(f"reconstructions {tuple(recon.shape)} do not have the images' shape {tuple(truth.shape)}")
    out = []
    r = recon.detach().flatten(1).double()
    for i in range(truth.shape[0]):
        cands = torch.cat([truth[i : i + 1], decoys[i]]).flatten(1).double().to(r.device)
        dist = torch.cdist(cands, r).min(dim=1).values  # each candidate's distance to its nearest reconstruction
        out.append(bool(dist[0] < dist[1:].min()))
    return out
