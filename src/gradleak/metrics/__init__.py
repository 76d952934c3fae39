"""Scores of an attack's output against the client's ground truth.

- :mod:`.images`: PSNR, SSIM, LPIPS (from a weights file you supply) and best-assignment pairing;
- :mod:`.labels`: multiset label accuracy, and error and exact recovery of soft labels;
- :mod:`.identifiability`: GradInversion's image identifiability precision (IIP);
- :mod:`.candidates`: candidate identification, the success the DP reconstruction bound applies to.

The image scores and :func:`label_accuracy` are re-exported here.
"""

from __future__ import annotations

from .candidates import candidate_success, draw_decoys
from .images import LPIPS, PSNR_CAP, ImageScores, grey_psnr, mse, pair_images, psnr, score_images, ssim
from .labels import label_accuracy

__all__ = [
    "PSNR_CAP",
    "ImageScores",
    "LPIPS",
    "candidate_success",
    "draw_decoys",
    "grey_psnr",
    "label_accuracy",
    "mse",
    "pair_images",
    "psnr",
    "score_images",
    "ssim",
]
