"""Scores of recovered labels against the client's ground truth.

- **Hard labels**: multiset accuracy ``Σ_c min(#true_c, #pred_c) / B`` (:func:`label_accuracy`):
  the order of a batch is unknown to the server, so labels are compared as multisets.
- **Soft labels**: ``max_abs_error = max_{b,c} |ŷ_bc − y_bc|`` and *exact recovery* at a stated tolerance:
  a sample's label counts as exactly recovered when ``max_c |ŷ_c − y_c| ≤ tol``. Wang et al. (ICLR 2024)
  report "label recovery accuracy" as the share of trials their search declares successful (their code
  compares the found scale with the true one to 1e-2); we score the *output label* instead, at
  ``tol = 1e-3`` (:data:`EXACT_TOL`, the criterion of the side-by-side harness of issue 10), which is
  stricter on the label and does not depend on a method's internals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..labels.augmented import EXACT_TOL
from ..labels.base import LabelResult

__all__ = ["EXACT_TOL", "exact_recovery", "label_accuracy", "max_abs_error", "score_labels"]


def label_accuracy(true: Sequence[int], pred: Sequence[int]) -> float:
    """Share of true labels recovered, as multisets: ``Σ_c min(#true_c, #pred_c) / len(true)``."""
    true, pred = [int(t) for t in true], [int(p) for p in pred]
    if not true:
        raise InputError("label accuracy needs at least one true label")
    t, p = Counter(true), Counter(pred)
    return sum(min(n, p[c]) for c, n in t.items()) / len(true)


def _pair(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    pred, true = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(true, dtype=torch.float64)
    if pred.dim() == 1:
        pred = pred[None]
    if true.dim() == 1:
        true = true[None]
    if pred.shape != true.shape:
        raise InputError(f"soft labels of shape {tuple(pred.shape)} cannot be scored against {tuple(true.shape)}")
    return pred, true


def max_abs_error(pred: Tensor, true: Tensor) -> float:
    """``max |ŷ − y|`` over all samples and classes (inf if ŷ has NaN)."""
    pred, true = _pair(pred, true)
    err = (pred - true).abs()
    return float(err.max()) if torch.isfinite(err).all() else float("inf")


def exact_recovery(pred: Tensor, true: Tensor, tol: float = EXACT_TOL) -> float:
    """Share of samples whose soft label is recovered to ``max_c |ŷ_c − y_c| ≤ tol``."""
    pred, true = _pair(pred, true)
    err = (pred - true).abs().amax(dim=1)
    return float(((err <= tol) & torch.isfinite(err)).double().mean())


def score_labels(
    result: LabelResult, true_labels: Sequence[int], true_targets: Tensor | None = None, *, tol: float = EXACT_TOL
) -> dict[str, Any]:
    """All scores of one :class:`LabelResult`: multiset accuracy, and for soft results error and exactness."""
    out: dict[str, Any] = {"label_accuracy": label_accuracy(list(true_labels), result.labels)}
    if result.soft is not None and true_targets is not None and true_targets.dtype.is_floating_point:
        out["soft_max_abs_error"] = max_abs_error(result.soft, true_targets)
        out["soft_exact"] = exact_recovery(result.soft, true_targets, tol)
        out["soft_tolerance"] = tol
    return out
