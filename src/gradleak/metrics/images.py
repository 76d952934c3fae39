"""Image scores of a reconstruction against the client's ground truth.

Images are ``[B, C, H, W]`` with values in [0, 1]; per-image scores are float64 tensors ``[B]``.

- ``psnr`` caps at :data:`PSNR_CAP` (100 dB) for identical images instead of returning inf, so that
  means and ``results.json`` stay finite.
- ``ssim`` follows Wang et al. 2004, "Image quality assessment: from error visibility to structural
  similarity" (IEEE TIP): an 11×11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed
  on the valid part of the image (no padding) and averaged over pixels and channels — the same
  numbers as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``. Images smaller than 11 px (e.g. 8×8 digits) use the largest odd
  window that fits, with sigma scaled by the same factor (``win/11 · 1.5``).
- ``LPIPS`` (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
  Metric", arXiv:1801.03924), AlexNet variant, only from a weights file the user supplies: no
  pretrained weights exist offline and LPIPS from random weights would be meaningless.
- Reconstructions come in an order the attacker does not know: :func:`pair_images` matches them
  to the originals by the assignment of least total MSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import InputError, UnsafeFileError

__all__ = ["PSNR_CAP", "ImageScores", "LPIPS", "mse", "pair_images", "psnr", "score_images", "ssim"]

PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(a: Tensor, b: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if a.dim() != 4 or a.shape != b.shape:
        raise InputError(
            f"{what} needs two image batches [B, C, H, W] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a.detach().to(torch.float64), b.detach().to(a.device, torch.float64)


# ------------------------------------------------------------------------------------ pixel scores
def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image, ``[B]``."""
    a, b = _check_pair(a, b, "mse")
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``[B]``; identical images score ``PSNR_CAP``."""
    if data_range <= 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    err = mse(a, b)
    floor = data_range**2 * 10.0 ** (-PSNR_CAP / 10.0)
    return 10.0 * torch.log10(data_range**2 / err.clamp_min(floor))


def _gaussian_window(channels: int, device: torch.device, size: int = SSIM_WINDOW) -> Tensor:
    r = size // 2
    sigma = SSIM_SIGMA * size / SSIM_WINDOW
    x = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (mean over pixels and channels), ``[B]``; see module docstring."""
    a, b = _check_pair(a, b, "ssim")
    size = min(SSIM_WINDOW, min(a.shape[-2:]))
    size -= 1 - size % 2  # largest odd window that fits
    if size < 3:
        raise InputError(f"ssim needs images of at least 3×3 pixels, got {tuple(a.shape[-2:])}")
    c = a.shape[1]
    w = _gaussian_window(c, a.device, size)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, w, groups=c)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


# ------------------------------------------------------------------------------------------ pairing
def pair_images(recon: Tensor, orig: Tensor) -> list[int]:
    """Best assignment of reconstructions to originals: ``recon[order[i]]`` is matched to ``orig[i]``.

    Minimises the total MSE (``scipy.optimize.linear_sum_assignment``); ``recon`` may hold more
    images than ``orig``, the extra ones stay unmatched.
    """
    if recon.dim() != 4 or orig.dim() != 4 or recon.shape[1:] != orig.shape[1:]:
        raise InputError(
            "pairing needs image batches [B, C, H, W] of one image shape, "
            f"got {tuple(recon.shape)} and {tuple(orig.shape)}"
        )
    if len(recon) < len(orig):
        raise InputError(f"cannot pair {len(recon)} reconstructions with {len(orig)} originals: need at least as many")
    rows, cols = linear_sum_assignment(_mse(recon, orig))
    order = [0] * len(orig)
    for i, j in zip(rows.tolist(), cols.tolist()):
        order[i] = j
    return order


def pair_originals(recon: Tensor, orig: Tensor) -> list[int]:
    """For fewer reconstructions than originals (an attack that recovers part of the batch, e.g. fishing's one
    sample): the distinct original paired with each reconstruction, ``orig[originals[j]]`` with ``recon[j]``, by
    the same least total MSE."""
    if recon.dim() != 4 or orig.dim() != 4 or recon.shape[1:] != orig.shape[1:] or len(recon) > len(orig):
        raise InputError(
            f"pairing part of a batch needs at most as many reconstructions as originals, of one image shape [B, C, H, "
            f"W], got {tuple(recon.shape)} and {tuple(orig.shape)}"
        )
    rows, cols = linear_sum_assignment(_mse(recon, orig))
    originals = [0] * len(recon)
    for i, j in zip(rows.tolist(), cols.tolist()):
        originals[j] = i
    return originals


def _mse(recon: Tensor, orig: Tensor) -> np.ndarray:
    """[n_orig, n_recon] mean squared errors."""
    r = recon.detach().to(torch.float64).flatten(1)
    o = orig.detach().to(r.device, torch.float64).flatten(1)
    return (torch.cdist(o, r).pow(2) / r.shape[1]).cpu().numpy()


# ------------------------------------------------------------------------------------------- scores
def _mean(values: Sequence[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class ImageScores:
    """Scores of each pair: original ``i`` (``originals[k]``, or ``k`` when ``originals`` is ``None``) with
    reconstruction ``order[k]``. Every original is scored (:func:`pair_images`) unless the attack returned fewer
    images than the batch; then each reconstruction is scored against its own original (:func:`pair_originals`).
    ``grey_psnr[k]``: what a constant image at the batch's mean pixel scores against the same original, the PSNR of
    reconstructing nothing (low-contrast images score 15 dB and more that way)."""

    order: list[int]
    psnr: list[float]
    ssim: list[float]
    lpips: list[float] | None = None
    originals: list[int] | None = None
    grey_psnr: list[float] | None = None

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def mean_lpips(self) -> float | None:
        return _mean(self.lpips)

    @property
    def mean_grey_psnr(self) -> float | None:
        return _mean(self.grey_psnr)

    def to_json(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "psnr": list(self.psnr),
            "ssim": list(self.ssim),
            "lpips": None if self.lpips is None else list(self.lpips),
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "mean_lpips": self.mean_lpips,
            "originals": None if self.originals is None else list(self.originals),
            "grey_psnr": None if self.grey_psnr is None else list(self.grey_psnr),
            "mean_grey_psnr": self.mean_grey_psnr,
        }


def grey_psnr(images: Tensor, level: float | None = None) -> Tensor:
    """Per image, the PSNR of a constant image at ``level`` (default: the batch's mean pixel) against it: what
    reconstructing nothing scores."""
    return psnr(torch.full_like(images, float(images.mean()) if level is None else level), images)


def score_images(recon: Tensor, orig: Tensor, *, lpips: LPIPS | None = None) -> ImageScores:
    """Pair ``recon`` with ``orig`` and score each pair (:class:`ImageScores`, with the grey baseline); ``recon`` is
    clamped to [0, 1] first, as shown."""
    if not torch.isfinite(recon).all():
        raise InputError("reconstructions contain NaN or inf values; they cannot be scored")
    originals = pair_originals(recon, orig) if len(recon) < len(orig) else None
    order = list(range(len(recon))) if originals is not None else pair_images(recon, orig)
    with torch.no_grad():
        matched = recon.detach()[order].clamp(0.0, 1.0)
        target = orig.detach().to(matched.device)
        if originals is not None:
            target = target[originals]
        return ImageScores(
            order=order,
            psnr=psnr(matched, target).tolist(),
            ssim=ssim(matched, target).tolist(),
            lpips=None if lpips is None else lpips(matched, target).tolist(),
            originals=originals,
            grey_psnr=grey_psnr(target, float(orig.mean())).tolist(),
        )


# ---------------------------------------------------------------------------------------------- LPIPS
# AlexNet `features` convolutions: (index in torchvision's `features`, lpips slice, stride, padding).
_ALEX_CONVS = ((0, 1, 4, 2), (3, 2, 1, 2), (6, 3, 1, 1), (8, 4, 1, 1), (10, 5, 1, 1))
_ALEX_SHAPES = ((64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3))
# LPIPS input scaling layer (constants of the reference implementation, on inputs in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
LPIPS_MIN_SIZE = 31


class LPIPS:
    """LPIPS distance (AlexNet variant) from a user-given safetensors file.

    Expected keys (those of the ``lpips`` package's ``LPIPS(net="alex")`` state dict):

    - backbone: ``net.slice1.0.weight/bias``, ``net.slice2.3.*``, ``net.slice3.6.*``,
      ``net.slice4.8.*``, ``net.slice5.10.*`` — torchvision's ``features.0.*``, ``features.3.*``,
      ``features.6.*``, ``features.8.*``, ``features.10.*`` are accepted instead;
    - linear heads: ``lin0.model.1.weight`` … ``lin4.model.1.weight`` of shape ``[1, C_k, 1, 1]``
      (``lin{k}.model.0.weight`` accepted, as saved without dropout).

    Use: ``LPIPS.from_file("alex_lpips.safetensors")(a, b)`` → ``[B]`` distances for images in [0, 1];
    grey images are repeated to 3 channels; images need at least 31×31 pixels.
    """

    def __init__(self, convs: list[tuple[Tensor, Tensor]], heads: list[Tensor]):
        self._convs = convs
        self._heads = heads
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[list[tuple[Tensor, Tensor]], list[Tensor]]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        """Load weights from a ``.safetensors`` file; pickle-based checkpoints are refused."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise UnsafeFileError(
                f"refusing to load LPIPS weights from {path}: pickle checkpoints can run code; convert it once "
                "with safetensors.torch.save_file(torch.load(path, weights_only=True), 'lpips.safetensors')"
            )
        if not path.is_file():
            raise InputError(f"LPIPS weights file {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise UnsafeFileError(
                f"refusing to load LPIPS weights from {path}: it is a pickle/zip checkpoint, not safetensors"
            )
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"cannot read {path} as safetensors LPIPS weights: {e}") from e
        return cls.from_state_dict(state, source=str(path))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], *, source: str = "state dict") -> LPIPS:
        """Build from tensors named as in :class:`LPIPS`'s docstring."""
        problems: list[str] = []

        def find(*names: str, shape: tuple[int, ...]) -> Tensor | None:
            for n in names:
                if n in state:
                    t = state[n]
                    if tuple(t.shape) != shape:
                        problems.append(f"{n} has shape {tuple(t.shape)}, expected {shape}")
                        return None
                    return t.detach().to(torch.float32)
            problems.append(f"missing {names[0]}")
            return None

        convs: list[tuple[Tensor, Tensor]] = []
        heads: list[Tensor] = []
        for k, ((idx, sl, _, _), shape) in enumerate(zip(_ALEX_CONVS, _ALEX_SHAPES)):
            w = find(f"net.slice{sl}.{idx}.weight", f"features.{idx}.weight", shape=shape)
            b = find(f"net.slice{sl}.{idx}.bias", f"features.{idx}.bias", shape=(shape[0],))
            h = find(f"lin{k}.model.1.weight", f"lin{k}.model.0.weight", shape=(1, shape[0], 1, 1))
            if w is not None and b is not None and h is not None:
                convs.append((w, b))
                heads.append(h)
        if problems:
            raise InputError(f"{source} is not an AlexNet LPIPS weights file: " + "; ".join(problems))
        return cls(convs, heads)

    def _weights(self, device: torch.device, dtype: torch.dtype) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (
                [(w.to(device, dtype), b.to(device, dtype)) for w, b in self._convs],
                [h.to(device, dtype) for h in self._heads],
            )
        return self._cache[key]

    def _features(self, x: Tensor, convs: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        feats = []
        for k, ((w, b), (_, _, stride, pad)) in enumerate(zip(convs, _ALEX_CONVS)):
            if k in (1, 2):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(F.conv2d(x, w, b, stride=stride, padding=pad))
            feats.append(x)
        return feats

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS distance per image pair, ``[B]``; inputs ``[B, C, H, W]`` in [0, 1], C in {1, 3}."""
        if a.dim() != 4 or a.shape != b.shape or a.shape[1] not in (1, 3):
            raise InputError(
                f"LPIPS needs two batches [B, 1|3, H, W] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if min(a.shape[-2:]) < LPIPS_MIN_SIZE:
            raise InputError(
                f"LPIPS (AlexNet) needs images of at least {LPIPS_MIN_SIZE}×{LPIPS_MIN_SIZE} pixels, got "
                f"{tuple(a.shape[-2:])}; load the data with a larger size (e.g. 32)"
            )
        dtype = a.dtype if a.is_floating_point() else torch.float32
        convs, heads = self._weights(a.device, dtype)
        shift = torch.tensor(_LPIPS_SHIFT, device=a.device, dtype=dtype).view(1, 3, 1, 1)
        scale = torch.tensor(_LPIPS_SCALE, device=a.device, dtype=dtype).view(1, 3, 1, 1)

        def prep(x: Tensor) -> Tensor:
            x = x.to(a.device, dtype).expand(-1, 3, -1, -1)
            return ((2 * x - 1) - shift) / scale

        total = torch.zeros(len(a), device=a.device, dtype=dtype)
        for fa, fb, head in zip(self._features(prep(a), convs), self._features(prep(b), convs), heads):
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((fa - fb) ** 2, head).mean(dim=(1, 2, 3))
        return total
