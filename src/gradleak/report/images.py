"""PNG grids and single images from image tensors in [0, 1]."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .files import write_bytes_atomic

__all__ = ["default_scale", "image_grid", "save_grid", "save_images", "to_pil"]

#: Small images are enlarged (nearest neighbour) until their longer side reaches this many pixels.
MIN_DISPLAY_PX = 128
_BACKGROUND = 255


def default_scale(height: int, width: int) -> int:
    """Integer upscale so a person can see the image: 32 px → 4, 8 px → 16, 224 px → 1."""
    return max(1, math.ceil(MIN_DISPLAY_PX / max(height, width, 1)))


def image_grid(
    rows: Sequence[torch.Tensor], *, pad: int = 2, scale: int | None = None, max_cols: int | None = None
) -> Image.Image:
    """Lay out image batches as rows of a grid.

    Args:
        rows: tensors ``[B, C, H, W]`` (or one image ``[C, H, W]``) in [0, 1], ``C`` 1 or 3, all of
            the same ``H`` and ``W``; values outside [0, 1] are clipped, NaN shows as black.
        pad: white pixels between cells (no outer border, so pixel (0, 0) is the first image's).
        scale: nearest-neighbour upscale factor; ``None`` picks :func:`default_scale`.
        max_cols: wrap rows longer than this; the wrapped parts are stacked in groups (originals
            and reconstructions stay together), separated by a wider gap.

    Returns:
        A PIL image, mode ``"L"`` if every row is grey, else ``"RGB"``.
    """
    if pad < 0:
        raise InputError(f"pad must be >= 0, got {pad}")
    if max_cols is not None and max_cols < 1:
        raise InputError(f"max_cols must be >= 1, got {max_cols}")
    arrays = [_to_uint8(r, i) for i, r in enumerate(rows)]
    arrays = [a for a in arrays if a.shape[0] > 0]
    if not arrays:
        raise InputError("image_grid needs at least one non-empty row of images")
    h, w = arrays[0].shape[1:3]
    for i, a in enumerate(arrays):
        if a.shape[1:3] != (h, w):
            raise InputError(
                f"all images in a grid must share one size; row {i} is {a.shape[1]}x{a.shape[2]}, row 0 is {h}x{w}"
            )
    s = default_scale(h, w) if scale is None else int(scale)
    if s < 1:
        raise InputError(f"scale must be >= 1, got {scale}")
    channels = 3 if any(a.shape[3] == 3 for a in arrays) else 1
    arrays = [np.repeat(a, 3, axis=3) if a.shape[3] != channels else a for a in arrays]

    cols = max(a.shape[0] for a in arrays)
    per_row = cols if max_cols is None else min(cols, max_cols)
    groups = math.ceil(cols / per_row)
    lines = [(g, a[g * per_row : (g + 1) * per_row]) for g in range(groups) for a in arrays]
    cell_h, cell_w = h * s, w * s
    group_gap = 4 * pad
    width = per_row * cell_w + (per_row - 1) * pad
    height = len(lines) * cell_h + (len(lines) - 1) * pad + (groups - 1) * (group_gap - pad)
    canvas = np.full((height, width, channels), _BACKGROUND, dtype=np.uint8)
    y = 0
    for n, (g, line) in enumerate(lines):
        if n and g != lines[n - 1][0]:
            y += group_gap - pad
        for c, img in enumerate(line):
            big = img.repeat(s, axis=0).repeat(s, axis=1)
            x = c * (cell_w + pad)
            canvas[y : y + cell_h, x : x + cell_w] = big
        y += cell_h + pad
    return to_pil(canvas)


def save_grid(
    path: str | os.PathLike[str],
    originals: torch.Tensor | None,
    reconstructions: torch.Tensor | Sequence[torch.Tensor],
    *,
    pad: int = 2,
    scale: int | None = None,
    max_cols: int | None = 16,
) -> str:
    """Write originals (top row; none without them) over reconstructions (one row per stage or attack) as a PNG.

    Written atomically; long batches wrap every ``max_cols`` images. Returns ``path`` as a string.
    """
    if isinstance(reconstructions, torch.Tensor):
        reconstructions = [reconstructions]
    rows = ([] if originals is None else [originals]) + list(reconstructions)
    grid = image_grid(rows, pad=pad, scale=scale, max_cols=max_cols)
    return write_bytes_atomic(path, _png_bytes(grid))


def save_images(folder: str | os.PathLike[str], images: torch.Tensor, prefix: str, *, scale: int = 1) -> list[str]:
    """Write each image of ``[B, C, H, W]`` as ``folder/{prefix}_{i:03d}.png``; returns paths."""
    batch = _to_uint8(images, 0)
    paths = []
    for i in range(batch.shape[0]):
        img = to_pil(batch[i])
        if scale != 1:
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        paths.append(write_bytes_atomic(Path(folder) / f"{prefix}_{i:03d}.png", _png_bytes(img)))
    return paths


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """One image ``[C, H, W]`` tensor in [0, 1] (or an ``[H, W, C]`` uint8 array) as a PIL image."""
    arr = image if isinstance(image, np.ndarray) else _to_uint8(image, 0)[0]
    return Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")


def _to_uint8(images: torch.Tensor, row: int) -> np.ndarray:
    """``[B, C, H, W]`` in [0, 1] → ``[B, H, W, C]`` uint8."""
    t = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise InputError(f"row {row}: expected images shaped [B, C, H, W] with C 1 or 3, got {list(t.shape)}")
    t = torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0)
    return (t * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
