"""Batch label counts with repeats — iLRG, Ma et al., ICLR 2023, "Instance-wise Batch Label Restoration via
Gradients in Federated Learning" (openreview FIrQfNSOoTr; official code BUAA-CST/iLRG), as published.

For the batch-mean cross-entropy the head's gradients are, per class ``c`` (``k_c`` samples of class c)::

    g_b[c] = (1/B) Σ_j p_jc − k_c / B          G_W[c] = (1/B) Σ_j (p_jc − y_jc) h_j

1. **Class-wise embeddings**: ``e_c = G_W[c] / g_b[c]`` — a weighted mean of the embeddings (exact for the
   class-c samples' mean embedding when the other samples' share is small); like the official code, the ratio's
   decimal exponent is bounded to ±10 (a zero ``g_b[c]`` counts as ``1e-64``).
2. **Class-wise probabilities**: ``q_c = softmax(W e_c + b)`` (the official ``alpha = 1``).
3. **Instance counts**: ``Σ_j p_jc ≈ Σ_d k_d q_d[c]`` turns the bias gradient into the linear system
   ``Σ_c k_c = B``, ``Σ_d k_d q_d[c] − k_c = B g_b[c]``, solved with the Moore–Penrose pseudo-inverse.
4. **Instance-level assignment** (the official post-processing): negative solutions become 0, the rest are
   rounded, a count above B becomes 0, and the sum is brought to B one instance at a time on the classes
   whose rounding moved furthest (down where it rounded up most, up where it rounded down most). The official
   code's upward branch slices with a negative index (``inds[:num_mod]``) and moves all but ``|num_mod|``
   classes; here it moves exactly ``|num_mod|`` — the paper's intent, and the only deviation.

Needs a known batch size, a FedSGD gradient and a head bias (``e_c`` divides by it). The paper's condition for
exact counts is that the class-wise embeddings are exact (one class per sample group, unsaturated softmax);
``details["gradient_rank"]`` reports the weight gradient's rank. :mod:`.ilrg_lsq` is gradleak's variant (a
least-squares mean embedding, a no-bias extension) under its own name.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..observation import Observation
from .base import LabelMethod, LabelResult, label_method, need_batch_size
from .ilrg_lsq import head_arrays, singular_values, softmax
from .llg import counts_to_labels

_EXPONENT_BOUND = 10  # the official code's bound on the decimal exponent of G_W[c, m] / g_b[c]


def class_embeddings(gw: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """``e_c = G_W[c] / g_b[c]`` with the ratio's decimal exponent bounded to ±10, as the official code does."""
    b = np.where(gb == 0, 1e-64, gb)
    ratio = gw / b[:, None]
    with np.errstate(divide="ignore"):
        exp_w = np.floor(np.log10(np.abs(np.where(gw == 0, 1.0, gw))))
        exp_b = np.floor(np.log10(np.abs(b)))
    mantissa = (gw / 10.0**exp_w) / (b / 10.0**exp_b)[:, None]
    bounded = np.clip(exp_w - exp_b[:, None], -_EXPONENT_BOUND, _EXPONENT_BOUND)
    return np.where(gw == 0, 0.0, np.where(bounded == exp_w - exp_b[:, None], ratio, mantissa * 10.0**bounded))


def solve_counts(Q: np.ndarray, gb: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """iLRG's count system by pseudo-inverse and its rounding to B instances: ``(raw, counts)``."""
    n = len(gb)
    A = np.vstack([np.ones(n), Q.T - np.eye(n)])
    raw = np.linalg.pinv(A) @ np.concatenate([[batch], batch * gb])
    res = np.round(np.where(raw > 0, raw, 0.0)).astype(np.int64)
    res[res > batch] = 0
    err = res - raw
    excess = int(res.sum()) - batch
    if excess > 0:
        down = [c for c in np.argsort(-err) if res[c] > 0][:excess]
        res[down] -= 1
    elif excess < 0:
        res[np.argsort(err)[:-excess]] += 1
    return raw, res


@label_method("ilrg")
class ILRG(LabelMethod):
    """iLRG as published: class-wise embeddings and probabilities, the count system, the official rounding.

    Example::

        res = ILRG().recover(obs)        # res.labels: the multiset, res.details["raw_counts"]
    """

    paper = (
        "Ma et al. ICLR 2023, Instance-wise Batch Label Restoration via Gradients in Federated Learning "
        "(iLRG), openreview FIrQfNSOoTr"
    )

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        need_batch_size(obs, problems)
        if obs.kind != "gradient":
            problems.append("iLRG reads one FedSGD gradient; this is a FedAvg delta (use fedavg)")
        if obs.head_grads()[1] is None:
            problems.append(
                f"the head {obs.head!r} has no bias: iLRG divides by the bias gradient (use ilrg-lsq or llg-whitebox)"
            )
        return problems

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        gw, gb, W, b = head_arrays(obs)
        assert gb is not None and b is not None  # checked by problems()
        B = obs.known_batch_size()
        Q = softmax(class_embeddings(gw, gb) @ W.T + b)
        raw, counts = solve_counts(Q, gb, B)
        sg = singular_values(gw @ gw.T if gw.shape[0] <= gw.shape[1] else gw.T @ gw)
        rank = int((sg > sg[0] * 1e-7).sum()) if sg.size and sg[0] > 0 else 0
        return LabelResult(
            self.name,
            counts_to_labels(counts),
            seconds=time.perf_counter() - t0,
            details={"counts": counts.tolist(), "raw_counts": raw.round(4).tolist(), "gradient_rank": rank},
        )
