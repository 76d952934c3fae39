"""Batch label counts with repeats — ``ilrg-lsq``, gradleak's variant of iLRG (Ma et al., ICLR 2023; the
published method is :mod:`.ilrg`): the same count system, but the probabilities come from a least-squares
estimate of the batch's mean embedding instead of iLRG's class-wise embeddings, and a head without a bias is
handled by an own extension. Not the paper's method: do not credit its numbers to iLRG.

For the batch-mean cross-entropy the head's gradients are, per class ``c`` (``k_c`` samples of class c,
``h_j`` the head's inputs, ``p_j`` the softmax outputs)::

    g_b[c] = p̄_c − k_c / B                     G_W[c] = (1/B) Σ_j p_jc h_j − (k_c / B) h̄_c

so the counts are exactly ``k = B (p̄ − g_b)``: everything hinges on the batch's mean prediction ``p̄``.
iLRG estimates it from *class-wise embeddings* ``e_c = G_W[c] / g_b[c]`` and probabilities
``q_c = softmax(W e_c + b)``, then solves the linear system ``Σ_c k_c = B``, ``k_c = Σ_d k_d q_d[c] − B g_b[c]``
by the pseudo-inverse. ``e_c`` is a weighted mean of the embeddings whose weights ``p_jc − y_jc`` nearly cancel
when a class's count is close to its predicted mass (``g_b[c] ≈ 0``: common once ``B ≫ N``); it then has a huge
norm, ``q_c`` saturates and the counts go wrong (the official code's 0.91 at B=128 with BatchNorm in train mode).

Here (our reading, same model of the gradient): the rows obey ``G_W[c] = g_b[c] h̄ + ε_c`` with ``h̄`` the batch's
mean embedding and ``ε_c = p̄_c (m_c − h̄) − (k_c/B)(h̄_c − h̄)`` a class-mean deviation whose variance grows like
``k_c``. ``h̄`` is estimated by weighted least squares across the rows (weights ``g_b[c] / k_c``, iterated with
the counts), class-mean embeddings follow as ``h̄_c = (B / k_c)(p̄_c h̄ − G_W[c])``, and iLRG's system is solved with
their probabilities. Without a bias, ``g_b`` is not observed: it is taken from the rank-one part of ``G_W``
(``G_W ≈ g_b h̄ᵀ``) with the scale fixed by the absent classes (``k_c = 0`` for the class that binds first), which
needs at least one class missing from the batch — checked (``B < N``).

**Rank condition** (checked, reported in ``details["rank_condition"]``; our reading of iLRG's): ``G_W = (1/B) ΔPᵀ H``
has rank at most ``min(B, N − 1, M)`` (the rows of ``ΔP`` sum to zero); every sample and class leaves its trace
only if that rank is reached (singular values above ``rank_tol`` × the largest). A sample the model predicts with
probability ≈ 1 contributes nothing, so on a saturated (confident, trained) model the rank drops and the counts
are not determined — the method refuses with that message. The count system's (N+1)×N matrix ``[1ᵀ; Qᵀ − I]``
must also have full column rank N (condition number ≤ ``max_condition``): without it the method always refuses.
When only the gradient's rank falls short the counts are still estimated (batches larger than the class count,
dead ReLU units or near-collinear rows of absent classes lower the rank without harm) and the result carries a
warning; ``strict=True`` refuses instead. Reported besides: whether the rank
reaches B (iLRG's instance-level case: every embedding lies in the row space of ``G_W``) and a predicted count
error from the rows' spread around ``g_b h̄ᵀ``. The condition is necessary, not sufficient: a nearly saturated
model can pass it and still give wrong counts.

A FedAvg delta is read as the mean local gradient ``−Δ / (lr · K)``; :mod:`.fedavg` replays the head's path
instead and is what ``auto`` picks for several local steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedError
from ..observation import Observation
from .base import LabelMethod, LabelResult, label_method, need_batch_size
from .llg import counts_to_labels, round_counts

ProbsFn = Callable[[np.ndarray], np.ndarray]  # embeddings [n, M] -> (path-averaged) softmax [n, N]


@dataclass(frozen=True, kw_only=True)
class ILRGConfig:
    """Settings of :class:`ILRGLsq` (numerical safeguards)."""

    strict: bool = False  # refuse when the weight gradient's rank condition fails (else: warn, approximate)
    max_condition: float = 1e6  # the count system is "rank deficient" beyond this condition number
    iterations: int = 8  # reweighting rounds of the mean-embedding estimate
    min_gradient: float = 1e-12  # a head gradient below this (max-abs) carries no label information
    rank_tol: float = 1e-7  # relative singular-value cut for the weight gradient rank (float32 noise ~1e-8)


@dataclass
class RankCondition:
    """Whether the counts are determined by the observation, with the numbers behind the verdict."""

    holds: bool
    system_rank: int
    classes: int
    condition_number: float
    gradient_rank: int
    instance_level: bool  # rank(G_W) ≥ B: every embedding lies in G_W's row space
    predicted_count_error: float  # 1-sigma error of the counts implied by the rows' spread
    reasons: list[str] = field(default_factory=list)
    system_ok: bool = True  # the count system alone has full rank (False: never solvable)

    def to_json(self) -> dict[str, Any]:
        return {
            "holds": self.holds,
            "system_rank": self.system_rank,
            "classes": self.classes,
            "condition_number": self.condition_number,
            "gradient_rank": self.gradient_rank,
            "instance_level": self.instance_level,
            "predicted_count_error": self.predicted_count_error,
            "system_ok": self.system_ok,
            "reasons": list(self.reasons),
        }


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def singular_values(gram: np.ndarray) -> np.ndarray:
    """Singular values of X from its Gram matrix XᵀX (or XXᵀ), descending. Small symmetric eigenproblems are
    much cheaper than an SVD here; torch's LAPACK is used because numpy's threaded BLAS took 0.1–0.7 s for a
    100×100 SVD on a loaded 2-core machine (torch follows ``torch.set_num_threads``)."""
    ev = torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(gram))).numpy()[::-1]
    return np.sqrt(np.clip(ev, 0.0, None))


@dataclass
class CountEstimate:
    counts: np.ndarray  # int [N], sums to B
    raw: np.ndarray  # float [N] solution of the count system
    mean_prob: np.ndarray  # estimated p̄ [N]
    mean_embedding: np.ndarray  # estimated h̄ [M]
    rank: RankCondition


def estimate_counts(
    gw: np.ndarray, gb: np.ndarray, batch: int, probs: ProbsFn, *, config: ILRGConfig = ILRGConfig()
) -> CountEstimate:
    """The counts from a batch-mean head gradient ``gw`` [N, M], ``gb`` [N] (float64) and the model's head.

    ``probs`` maps embeddings to (path-averaged) softmax outputs: ``softmax(h Wᵀ + b)`` for one gradient.
    """
    n_cls = gw.shape[0]
    B = float(batch)
    # mean embedding: least squares of the rows on the bias gradient, reweighted by the estimated counts
    h = (gb @ gw) / max(float(gb @ gb), 1e-300)
    p = probs(h[None])[0]
    k = np.clip(B * (p - gb), 0.5, None)
    for _ in range(config.iterations):
        w = gb / k
        h = (w @ gw) / max(float(w @ gb), 1e-300)
        p = probs(h[None])[0]
        k = np.clip(B * (p - gb), 0.5, None)
    # predicted count error from the rows' spread around g_b h̄ (GLS standard error in logit-probability space)
    resid = gw - gb[:, None] * h[None]
    w = gb / k
    dh = np.sqrt(((w[:, None] * resid) ** 2).sum(0)) / max(abs(float(w @ gb)), 1e-300)
    dp = probs((h + dh)[None])[0] - p
    pred_err = float(B * np.abs(dp).max())
    # class-mean embeddings for classes with an estimated count; the mean embedding for the others
    present = B * (p - gb) >= 0.5
    hc = np.repeat(h[None], n_cls, 0)
    kk = np.clip(B * (p - gb), 0.5, None)
    hc[present] = (B / kk[present])[:, None] * (p[present, None] * h[None] - gw[present])
    Q = probs(hc)  # row d: class d's probabilities
    A = np.vstack([np.ones(n_cls), Q.T - np.eye(n_cls)])
    v = np.concatenate([[B], B * gb])
    AtA = A.T @ A
    sv = singular_values(AtA)
    cond = float(sv[0] / max(sv[-1], 1e-300))
    sys_rank = int((sv > sv[0] * 1e-10).sum())
    if sys_rank == n_cls:
        raw = torch.linalg.solve(torch.from_numpy(AtA), torch.from_numpy(A.T @ v)).numpy()  # normal equations
    else:
        raw = np.linalg.lstsq(A, v, rcond=None)[0]
    counts = round_counts(raw, int(batch))
    sg = singular_values(gw @ gw.T if gw.shape[0] <= gw.shape[1] else gw.T @ gw)
    g_rank = int((sg > sg[0] * config.rank_tol).sum()) if sg.size and sg[0] > 0 else 0
    need = min(int(batch), n_cls - 1, gw.shape[1])
    reasons, warnings = [], []
    if g_rank < need:
        warnings.append(
            f"the head's weight gradient has rank {g_rank} < min(B, N − 1, M) = {need} (singular values "
            f"below {config.rank_tol:g} × the largest): some samples or classes leave (almost) no gradient "
            "— the model predicts them with probability ≈ 1 — so their counts are not determined"
        )
    if sys_rank < n_cls or cond > config.max_condition:
        reasons.append(
            f"the count system [1ᵀ; Qᵀ − I] has rank {sys_rank}/{n_cls} (condition number {cond:.3g} > "
            f"{config.max_condition:g}): samples predicted with probability ≈ 1 leave no gradient, so their "
            "counts are not determined (a saturated or well-trained model)"
        )
    rank = RankCondition(
        holds=not (reasons or warnings),
        system_rank=sys_rank,
        classes=n_cls,
        condition_number=cond,
        gradient_rank=g_rank,
        instance_level=g_rank >= batch,
        predicted_count_error=pred_err,
        reasons=reasons + warnings,
        system_ok=not reasons,
    )
    return CountEstimate(counts, raw, p, h, rank)


def bias_free_gradient(
    gw: np.ndarray, batch: int, logits: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, float]:
    """The unobserved bias gradient of a bias-free head (needs a class absent from the batch, ``B < N``).

    Rows of absent classes are positive combinations ``(1/B) Σ_j p_jc h_j`` of the embeddings; their sum gives
    the direction ``v`` of the mean embedding. Each row's projection on ``v`` is ``g_b[c]·s`` with ``s`` the
    mean embedding's length, and ``s`` is fixed by the absent classes, whose bias gradient equals their
    predicted mass: ``Σ_A a_c / s = Σ_A softmax(s W v)_c``. Returns ``(g_b, s)``. Assumes non-negative
    embeddings (ReLU / sigmoid features); exact up to the spread of the embeddings' lengths.
    """
    ev, vecs = np.linalg.eigh(gw @ gw.T)  # top left singular vector of G_W
    u = vecs[:, -1] * np.sqrt(max(ev[-1], 0.0))
    v = gw.T @ vecs[:, -1] / max(np.sqrt(max(ev[-1], 0.0)), 1e-300)
    if v.sum() < 0:  # non-negative mean embedding
        u, v = -u, -v
    absent = u > 0
    for _ in range(3):  # refine the direction from the absent rows
        m = gw[absent].sum(0)
        v = m / max(float(np.linalg.norm(m)), 1e-300)
        a_all = gw @ v
        absent = a_all > 0
    a = logits(v[None])[0]
    a_abs = float(a_all[absent].sum())

    def excess(s: float) -> float:  # > 0 while s is too small
        return a_abs / s - float(softmax(s * a)[absent].sum())

    lo, hi = 1e-12, 1.0
    while excess(hi) > 0 and hi < 1e12:
        hi *= 4.0
    for _ in range(200):
        mid = float(np.sqrt(lo * hi))
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    s = float(np.sqrt(lo * hi))
    return a_all / s, s


def head_arrays(obs: Observation) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """The head's weight gradient, bias gradient, weight and bias as float64 arrays (biases None if absent)."""
    head = obs.head_module()
    gw_t, gb_t = obs.head_grads()
    gw = gw_t.detach().cpu().double().numpy()
    gb = None if gb_t is None else gb_t.detach().cpu().double().numpy()
    W = head.weight.detach().cpu().double().numpy()
    b = None if head.bias is None else head.bias.detach().cpu().double().numpy()
    return gw, gb, W, b


@label_method("ilrg-lsq")
class ILRGLsq(LabelMethod):
    """iLRG's count system on a least-squares mean embedding (gradleak's variant; see the module docstring).

    Args:
        config: :class:`ILRGConfig` (numerical safeguards only).

    Example::

        res = ILRGLsq().recover(obs)     # res.labels: the multiset, res.details["rank_condition"]
    """

    paper = (
        "gradleak variant of Ma et al. ICLR 2023 (iLRG, openreview FIrQfNSOoTr): least-squares mean embedding, "
        "no-bias extension"
    )

    Config = ILRGConfig
    config: ILRGConfig

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        B = need_batch_size(obs, problems)
        if obs.head_grads()[1] is None and B and obs.num_classes <= B:
            problems.append(
                f"the head {obs.head!r} has no bias, so the bias gradient is estimated from the weight "
                f"gradient with its scale fixed by a class absent from the batch; that needs batch size "
                f"({B}) < classes ({obs.num_classes}). Use llg-whitebox (or a model with a head bias)"
            )
        return problems

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        gw, gb, W, b = head_arrays(obs)
        note = "FedSGD gradient"
        if obs.kind == "delta":
            scale = obs.fedavg().local_steps * obs.fedavg().local_lr
            gw, gb = -gw / scale, None if gb is None else -gb / scale
            note = "FedAvg delta read as the mean local gradient −Δ/(lr·K) (first order in lr); see 'fedavg'"
        B = obs.known_batch_size()
        if float(np.abs(gw).max(initial=0.0)) <= self.config.min_gradient:
            raise UnsupportedError(
                self.name,
                [
                    "the head gradient is (numerically) zero: every sample is predicted "
                    "with probability ≈ 1, so the update carries no label counts"
                ],
            )
        bb = np.zeros(W.shape[0]) if b is None else b

        Wt_t = torch.from_numpy(np.ascontiguousarray(W.T))

        def probs(h: np.ndarray) -> np.ndarray:
            return softmax((torch.from_numpy(np.ascontiguousarray(h)) @ Wt_t).numpy() + bb)

        extra: dict[str, Any] = {"update": note}
        if gb is None:
            gb, s = bias_free_gradient(gw, B, lambda h: h @ W.T)
            extra["bias_gradient"] = f"estimated (rank-one part of the weight gradient, mean-embedding norm {s:.4g})"
        est = estimate_counts(gw, gb, B, probs, config=self.config)
        if not est.rank.system_ok or (self.config.strict and not est.rank.holds):
            raise UnsupportedError(self.name, est.rank.reasons)
        if not est.rank.holds:
            extra["warning"] = (
                "rank condition not met: the counts are an approximation (" + "; ".join(est.rank.reasons) + ")"
            )
        return LabelResult(
            self.name,
            counts_to_labels(est.counts),
            seconds=time.perf_counter() - t0,
            details={
                "counts": est.counts.tolist(),
                "raw_counts": est.raw.round(4).tolist(),
                "rank_condition": est.rank.to_json(),
                **extra,
            },
        )
