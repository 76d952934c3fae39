"""Gradient compression as a defense: global top-k sparsification plus stochastic quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InputError
from .base import DEFENSES, Defense, Update

__all__ = ["Compress"]


@DEFENSES.register("compress")
@dataclass(frozen=True)
class Compress(Defense):
    """Gradient compression: global top-k sparsification, then stochastic ``bits``-bit quantization.

    As in Deep Gradient Compression (Lin et al., ICLR 2018, arXiv:1712.01887) the ``ratio`` fraction
    of entries with the smallest magnitude is dropped over the *whole* update (one threshold for all
    layers, unlike ``sparsify``'s per-tensor one); the kept values are then quantized without bias
    to ``bits`` bits per magnitude on each tensor's [0, max|v|] (QSGD-style stochastic rounding,
    Alistarh et al. NeurIPS 2017,
    arXiv:1610.02132; sign kept, ``bits=0``: no quantization). DGC's momentum correction and
    error-feedback accumulation carry state across rounds and change nothing in one round; they are
    not modelled. Spec: ``compress:0.99`` or ``compress:ratio=0.9,bits=4``.
    """

    ratio: float
    bits: int = 0
    name: ClassVar[str] = "compress"
    main: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise InputError(f"compress ratio is the fraction of entries dropped, in [0, 1); got {self.ratio}")
        if not (isinstance(self.bits, int) and 0 <= self.bits <= 16):
            raise InputError(f"compress bits must be an integer in 0..16 (0: no quantization), got {self.bits}")

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        flat = torch.cat([v.flatten() for v in update.values()])
        keep = max(1, int(round(flat.numel() * (1 - self.ratio))))
        thresh = flat.abs().topk(keep).values[-1]
        out = {}
        for k, v in update.items():
            kept = v * (v.abs() >= thresh).to(v.dtype)
            top = kept.abs().max() if kept.numel() else kept.new_zeros(())
            if self.bits and top > 0:
                levels = 2**self.bits - 1
                scaled = kept.abs() / top * levels
                low = scaled.floor()
                up = torch.rand(v.shape, generator=generator, dtype=v.dtype) < (scaled - low)
                kept = torch.sign(kept) * (low + up.to(v.dtype)) * top / levels
            out[k] = kept
        return out
