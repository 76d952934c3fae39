"""Image registration for GradInversion's group consistency (Yin et al. CVPR 2021, PAPERS.md §2).

GradInversion aligns every seed's candidate onto the group's pixel mean before averaging, so that
seeds which found the same image at slightly different positions do not blur the consensus. The
paper uses RANSAC-flow (Shen et al. 2020). We replace it by a classical two-stage registration:

1. **phase correlation** (normalised cross-power spectrum, peak with parabolic sub-pixel
   refinement) for the translation — global, closed form, robust to intensity changes;
2. **an affine fit by gradient descent**: the 2×3 affine ``θ`` of ``F.affine_grid`` is initialised
   at that translation and refined with Adam on the MSE between the warped image and the reference,
   with a pull toward the identity so that flat or unrelated images stay unwarped.

Why not RANSAC-flow: it needs pretrained deep features (ImageNet MoCo/ResNet weights, unavailable
offline) and a per-pair fine-tuned flow network, minutes per image on a CPU; at the 16–64 px sizes
gradleak audits, the misalignments between seeds are global shifts and small warps (scale,
rotation, shear), which translation + affine captures. Everything is batched over ``N`` image
pairs, deterministic, and never sees ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError

__all__ = ["Registration", "phase_correlation", "register", "shift_theta", "warp"]


@dataclass
class Registration:
    """``aligned`` [N, C, H, W]: ``moving`` warped onto ``fixed``; ``theta`` [N, 2, 3] in the
    normalised coordinates of ``F.affine_grid`` (output pixel p samples the input at ``θ·[p, 1]``);
    ``shift`` [N, 2] (dy, dx) in pixels from phase correlation (``moving ≈ fixed`` shifted by it)."""

    aligned: Tensor
    theta: Tensor
    shift: Tensor


def _check(moving: Tensor, fixed: Tensor) -> None:
    if moving.dim() != 4 or moving.shape != fixed.shape:
        raise InputError(
            f"registration needs two image batches [N, C, H, W] of one shape, "
            f"got {tuple(moving.shape)} and {tuple(fixed.shape)}"
        )


def phase_correlation(moving: Tensor, fixed: Tensor) -> Tensor:
    """The translation (dy, dx) in pixels, [N, 2], such that ``moving(p) ≈ fixed(p − shift)``.

    Channels are averaged; the mean is removed and a Hann window applied before the FFT; the
    correlation peak is refined to sub-pixel precision by a parabola through its neighbours."""
    _check(moving, fixed)
    n, _, h, w = moving.shape
    win = (
        torch.outer(
            torch.hann_window(h, periodic=False, dtype=torch.float64),
            torch.hann_window(w, periodic=False, dtype=torch.float64),
        )
        if min(h, w) > 8
        else 1.0
    )

    def prep(x: Tensor) -> Tensor:
        g = x.detach().double().mean(1)
        return (g - g.mean((-2, -1), keepdim=True)) * win

    fm, ff = torch.fft.fft2(prep(moving)), torch.fft.fft2(prep(fixed))
    cross = fm * ff.conj()
    corr = torch.fft.ifft2(cross / (cross.abs() + 1e-12)).real  # [N, H, W]
    flat = corr.flatten(1).argmax(1)
    py, px = flat // w, flat % w
    out = torch.zeros(n, 2, dtype=torch.float64)
    idx = torch.arange(n)
    for dim, (p, size) in enumerate(((py, h), (px, w))):

        def at(off: int) -> Tensor:
            q = (p + off) % size
            return corr[idx, q, px] if dim == 0 else corr[idx, py, q]

        c0, cm, cp = at(0), at(-1), at(1)
        denom = cm - 2 * c0 + cp
        sub = torch.where(denom.abs() > 1e-12, 0.5 * (cm - cp) / denom, torch.zeros_like(c0)).clamp(-0.5, 0.5)
        s = p.double() + sub
        out[:, dim] = torch.where(s > size / 2, s - size, s)  # wrap to (−size/2, size/2]
    return out.float()


def shift_theta(shift: Tensor, size: tuple[int, int]) -> Tensor:
    """The affine ``θ`` [N, 2, 3] that moves an image *back* by ``shift`` (undoes the translation)."""
    h, w = size
    theta = torch.zeros(len(shift), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * shift[:, 1] / w  # x in normalised units
    theta[:, 1, 2] = 2 * shift[:, 0] / h
    return theta


def warp(images: Tensor, theta: Tensor) -> Tensor:
    """Resample ``images`` [N, C, H, W] with the affine ``theta`` [N, 2, 3] (bilinear, border)."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def register(
    moving: Tensor,
    fixed: Tensor,
    *,
    affine: bool = True,
    steps: int = 40,
    lr: float = 0.01,
    identity_weight: float = 1e-3,
) -> Registration:
    """Align ``moving`` onto ``fixed`` (both [N, C, H, W]): phase correlation, then (``affine``) an
    affine refinement by ``steps`` Adam steps on ``MSE(warp(moving), fixed) + identity_weight·‖A − I‖²``
    (A the linear part). The refinement keeps whichever of the translation-only and refined warps
    fits ``fixed`` better, so it never makes an alignment worse."""
    _check(moving, fixed)
    moving, fixed = moving.detach().float(), fixed.detach().float()
    shift = phase_correlation(moving, fixed)
    shift = torch.where(shift.abs() < 1e-3, torch.zeros_like(shift), shift)  # rounding noise: no shift
    theta0 = shift_theta(shift, (moving.shape[-2], moving.shape[-1]))
    if not affine or steps < 1:
        return Registration(_warp_or_keep(moving, theta0), theta0, shift)
    eye = torch.eye(2, 3).expand_as(theta0)

    def err(theta: Tensor) -> Tensor:
        return (warp(moving, theta) - fixed).pow(2).flatten(1).mean(1)

    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = err(theta).sum() + identity_weight * (theta[:, :, :2] - eye[:, :, :2]).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        theta = theta.detach()
        better = (err(theta) < err(theta0))[:, None, None]
        theta = torch.where(better, theta, theta0)
        return Registration(_warp_or_keep(moving, theta), theta, shift)


def _warp_or_keep(images: Tensor, theta: Tensor) -> Tensor:
    """:func:`warp`, leaving images whose ``theta`` is exactly the identity untouched (bit for bit)."""
    identity = (theta == torch.eye(2, 3)).flatten(1).all(1)[:, None, None, None]
    return torch.where(identity, images, warp(images, theta))
