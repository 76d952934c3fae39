"""Exact augmented (soft) label recovery — Wang, Liang & He, ICLR 2024, "Towards Eliminating Hard Label
Constraints in Gradient Inversion Attacks", arXiv:2402.03124 (PAPERS.md §1).

For one input with cross-entropy on a soft target ``y`` (label smoothing, mixup), the head's gradients are
rank one: ``∂L/∂W = (p − y) hᵀ`` and ``∂L/∂b = p − y`` with ``p = softmax(W h + b)``. Knowing ``W`` (and
``b``), recovering the feature ``h`` recovers the logits, hence ``y = p − ∂L/∂z`` exactly.

**With a bias** (closed form): ``h = ∂L/∂Wᵀ g_b / |g_b|²``, ``y = softmax(W h + b) − g_b``.

**Without a bias** only the direction ``u`` of ``h`` is observed: ``h = λ u`` with ``|u| = 1``. Writing
``a = W u`` and ``d = ∂L/∂W u`` (so ``d = λ*(p − y)``), every λ gives a candidate label
``ŷ(λ) = softmax(λ a) − d / λ`` with ``Σ ŷ = 1`` (the paper's Theorem 1), so the scale must come from the
label's structure: the N−1 smallest entries of a smoothed label are equal (``ε/N``), the N−2 smallest of a
two-class mixup label are equal (0). The paper minimises the variance of those entries over λ with
L-BFGS from λ = ±1 and a particle-swarm fallback (slow, seconds to minutes). Here the search is replaced by
a closed form per triple of "equal" classes:

    for i, j, k with a_i > a_j > a_k among the equal entries,  d_i − d_j = A (e^{λa_i} − e^{λa_j}), so
    R = (d_i − d_j) / (d_i − d_k) = r(λ) = (1 − e^{−λ(a_i − a_j)}) / (1 − e^{−λ(a_i − a_k)}),

and ``r`` is strictly increasing from 0 (λ → −∞) to 1 (λ → +∞) (its log-derivative is
``g(α) − g(β)`` with ``g(x) = x / (e^{λx} − 1)`` decreasing in x), so each triple gives **one** λ — sign
included — by bisection (vectorised over triples). Among any 5 classes at most 2 break the structure (the
mixup pair), so taking all triples of ≥ 5 well-spread classes guarantees an all-"equal" triple. The paper's
variance loss picks it once made scale-free (:func:`_rel_loss`: the plain variance also vanishes as |λ| → ∞,
where ŷ saturates to a one-hot — a spurious minimum that wins when p is nearly uniform), and a bounded Brent
step on that loss (fixed equal set) polishes λ. The whole
recovery is a few milliseconds and involves no random restarts. Smoothing with any ε (including 0, a hard
label) is the "N−1 equal" structure, mixup with any weight the "N−2 equal" one; ``structure="auto"``
(default) fits the weaker N−2 structure — a smoothed label satisfies it too, with the same λ — and then
reports which one the recovered label has.

**Necessary condition** (our reading of the paper's, which is stated loosely): analytic label recovery is
possible only if the logits ``z`` are determined by the gradient, since ``y = softmax(z) − ∂L/∂z``. This
needs (i) one input (a rank-one head gradient), (ii) a non-zero head gradient, and (iii) something that fixes
the scale of ``h``: a bias gradient, or a label structure whose equal entries the softmax can tell apart —
if the "equal" classes have (numerically) equal probabilities for every scale near the solution (their
logit directions ``a`` coincide, or their probabilities underflow), any scale fits and ε / the mixup weight
are not identifiable. :meth:`Wang2024.necessary_condition` reports (i)–(iii), the last as the error in ŷ
predicted from how sharply the loss pins λ down; :meth:`recover` refuses when it fails.

Recovered features (``LabelResult.features``, ``[1, M]``) are the exact input of the head — other attacks
can match them (e.g. a feature-matching term ``|f(x) − h|²`` on the model body).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, UnsupportedError
from ..observation import Observation
from ..protocols import FedAvg
from .base import LabelMethod, LabelResult, label_method

#: the paper's exact-recovery criterion as used by the anchor harness: max_c |ŷ_c − y_c| ≤ 1e-3
EXACT_TOL = 1e-3
_BISECT_STEPS = 80  # [−700, 700] / 2^80 ≈ 6e-22 in t
_T_MAX = 700.0


@dataclass
class NecessaryCondition:
    """Whether analytic recovery is possible on an observation, and why not."""

    holds: bool
    reasons: list[str] = field(default_factory=list)
    predicted_error: float | None = None  # max-abs error in ŷ implied by how well λ is pinned down
    details: dict[str, Any] = field(default_factory=dict)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _yhat(lam: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Candidate labels ŷ(λ) for scales ``lam`` [T] → [T, N]."""
    lam = np.asarray(lam, dtype=np.float64).reshape(-1, 1)
    return _softmax(lam * a[None, :]) - d[None, :] / lam


def _loss(lam: np.ndarray, a: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """The paper's loss: variance of the ``k`` smallest entries of ŷ(λ), per λ."""
    y = np.sort(_yhat(lam, a, d), axis=1)[:, :k]
    return y.var(axis=1)


def _rel_loss(lam: np.ndarray, a: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """The paper's loss made scale-free: ``λ² var_S(ŷ) / var_S(d) = var_S(λ p(λ) − d) / var_S(d)`` over the
    same ``k`` smallest entries S. The plain variance also tends to 0 as |λ| → ∞ (ŷ → a one-hot, its small
    entries → −d/λ → 0), a spurious minimum that beats a noisy true scale when p is nearly uniform; this
    ratio tends to 1 there (and as λ → 0) and is 0 only at the true scale."""
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    y = _yhat(lam, a, d)
    idx = np.argsort(y, axis=1)[:, :k]
    num = np.take_along_axis(y, idx, axis=1).var(axis=1) * lam**2
    den = d[idx].var(axis=1)
    return num / np.maximum(den, 1e-300)


def _r(t: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """r as a function of t = λβ, ρ = α/β ∈ (0, 1): expm1(−tρ)/expm1(−t) (no overflow for |t| ≤ 700)."""
    safe = np.where(t == 0, 1.0, t)
    return np.where(t == 0, rho, np.expm1(-safe * rho) / np.expm1(-safe))


def triple_scales(a: np.ndarray, d: np.ndarray, index: np.ndarray) -> np.ndarray:
    """One λ per triple of ``index`` (NaN where the triple is degenerate or inconsistent)."""
    triples = np.array(list(itertools.combinations(index.tolist(), 3)), dtype=np.int64)
    if len(triples) == 0:
        return np.empty(0)
    order = np.argsort(-a[triples], axis=1)  # i: largest a, j: middle, k: smallest
    tri = np.take_along_axis(triples, order, axis=1)
    ai, aj, ak = (a[tri[:, c]] for c in range(3))
    di, dj, dk = (d[tri[:, c]] for c in range(3))
    alpha, beta = ai - aj, ai - ak
    num, den = di - dj, di - dk
    scale = np.maximum(np.abs(a).max(), 1e-300)
    ok = (alpha > 1e-12 * scale) & (beta - alpha > 1e-12 * scale) & (den != 0)
    R = np.where(ok, num / np.where(den == 0, 1, den), np.nan)
    ok &= (R > 0) & (R < 1)
    rho = np.where(ok, alpha / np.where(ok, beta, 1), 0.5)
    lo = np.full(len(tri), -_T_MAX)
    hi = np.full(len(tri), _T_MAX)
    for _ in range(_BISECT_STEPS):  # r is increasing in t: plain bisection
        mid = 0.5 * (lo + hi)
        below = _r(mid, rho) < R
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    t = 0.5 * (lo + hi)
    lam = t / np.where(ok, beta, 1)
    lam[~ok | (np.abs(t) >= _T_MAX * 0.999) | (t == 0)] = np.nan
    return lam


def _spread_index(a: np.ndarray, count: int) -> np.ndarray:
    """Classes to form triples from: the largest logit directions (where probabilities vary) plus a spread."""
    n = len(a)
    if n <= count:
        return np.arange(n)
    order = np.argsort(-a)
    top = order[: count // 2]
    rest = order[count // 2 :]
    picks = rest[np.linspace(0, len(rest) - 1, count - len(top)).round().astype(int)]
    return np.unique(np.concatenate([top, picks]))


@dataclass(frozen=True, kw_only=True)
class Wang2024Config:
    """Settings of :class:`Wang2024` (see its docstring)."""

    structure: str = "auto"
    tolerance: float = EXACT_TOL
    candidates: int = 10

    def __post_init__(self) -> None:
        if self.structure not in ("auto", "smoothing", "mixup"):
            raise InputError(f"structure must be 'auto', 'smoothing' or 'mixup', got {self.structure!r}")


@label_method("wang2024")
class Wang2024(LabelMethod):
    """Exact soft labels and last-layer features from one input's gradient (Wang et al. ICLR 2024).

    Args:
        structure: ``"auto"`` (default: the N−2-equal structure, which covers label smoothing and two-class
            mixup), ``"smoothing"`` (N−1 equal entries) or ``"mixup"`` (N−2 equal entries).
        tolerance: the largest predicted error in ŷ the necessary-condition check accepts (default
            ``EXACT_TOL`` = 1e-3, the paper's exactness criterion).
        candidates: how many classes the triples are drawn from (default 10; all if N ≤ 10).

    Needs: one input (B = 1, or unknown with a rank-one head gradient), a FedSGD gradient (or FedAvg with
    one local step and its known rate), N ≥ 4 (smoothing) / 5 (mixup or auto) without a bias.
    Returns ``soft`` ``[1, N]``, ``features`` ``[1, M]`` (the head's input), ``labels`` = the dominant class.

    Example::

        obs, _ = simulate(Scenario(batch_size=1, label_smoothing=0.1))
        res = Wang2024().recover(obs); res.soft, res.features
    """

    paper = "Wang, Liang & He, ICLR 2024, Towards Eliminating Hard Label Constraints, arXiv:2402.03124"

    Config = Wang2024Config
    config: Wang2024Config

    @property
    def structure(self) -> str:
        return self.config.structure

    @property
    def tolerance(self) -> float:
        return self.config.tolerance

    @property
    def candidates(self) -> int:
        return max(5, self.config.candidates)

    # -- inputs ------------------------------------------------------------------------------------
    def _gradient(self, obs: Observation) -> tuple[np.ndarray, np.ndarray | None]:
        """The head gradient of the one input's loss in float64 numpy (FedAvg K=1: −delta / lr).

        numpy, not torch: these are tiny arrays, and torch's thread pool costs more than the work here
        (tens of ms per op on a loaded 2-core machine)."""
        gw, gb = obs.head_grads()
        w, b = _np(gw), None if gb is None else _np(gb)
        if isinstance(obs.protocol, FedAvg):
            lr = obs.protocol.local_lr
            return -w / lr, None if b is None else -b / lr
        return w, b

    def _equal_count(self, n: int) -> int:
        return n - 1 if self.structure == "smoothing" else n - 2

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        if obs.batch_size not in (None, 1):
            problems.append(
                f"it recovers the label of one input; this update comes from {obs.batch_size} "
                "(a batch's head gradient is not rank one)"
            )
        if isinstance(obs.protocol, FedAvg) and obs.protocol.local_steps != 1:
            problems.append(
                f"a FedAvg update after {obs.protocol.local_steps} local steps is not one gradient; "
                "it needs FedSGD or FedAvg with one local step"
            )
        w = _np(obs.head_grads()[0])
        b = obs.head_grads()[1]
        nonzero = bool(np.any(w != 0))
        if not nonzero:
            problems.append("the head's weight gradient is zero: nothing to recover (the model fits the label exactly)")
        elif b is None and self._equal_count(obs.num_classes) < 3:
            problems.append(
                f"without a bias the scale is fixed by ≥ 3 equal label entries; {obs.num_classes} "
                f"classes leave {self._equal_count(obs.num_classes)} under the {self.structure} structure"
            )
        if obs.batch_size is None and nonzero:
            s = np.linalg.svd(w, compute_uv=False)
            if len(s) > 1 and float(s[1] / s[0]) > 1e-3:
                problems.append(
                    f"the head gradient has rank > 1 (σ₂/σ₁ = {float(s[1] / s[0]):.2e}): more than one input"
                )
        return problems

    # -- the no-bias scale search --------------------------------------------------------------------
    def _direction(self, gw: np.ndarray) -> np.ndarray:
        r = int(np.argmax((gw * gw).sum(1)))
        u = gw[r] / np.linalg.norm(gw[r])
        u = gw.T @ (gw @ u)  # one power step: averages all rows' noise
        u /= np.linalg.norm(u)
        return u if u.sum() >= 0 else -u

    def solve_scale(self, a: np.ndarray, d: np.ndarray) -> tuple[float, float, int]:
        """λ from closed-form triples, the best by the scale-free loss (:func:`_rel_loss`), polished by bounded
        Brent on it (±10 % in λ). Returns ``(λ, the paper's variance loss at λ, k)``."""
        from scipy.optimize import minimize_scalar

        n = len(a)
        k = self._equal_count(n)
        lams = triple_scales(a, d, _spread_index(a, self.candidates))
        lams = lams[np.isfinite(lams)]
        if len(lams) == 0:
            return math.nan, math.inf, k
        losses = _rel_loss(lams, a, d, k)
        best = int(np.argmin(losses))
        lam0, loss0 = float(lams[best]), float(losses[best])
        eq = np.argsort(_yhat(np.array([lam0]), a, d)[0])[:k]  # the "equal" entries at the candidate
        den = max(float(d[eq].var()), 1e-300)

        def obj(s: float) -> float:
            lam = lam0 * math.exp(s)
            return float(_yhat(np.array([lam]), a, d)[0, eq].var()) * lam * lam / den

        res = minimize_scalar(obj, bounds=(-0.1, 0.1), method="bounded", options={"xatol": 1e-13})
        lam1 = lam0 * math.exp(float(res.x))
        loss1 = float(_rel_loss(np.array([lam1]), a, d, k)[0])
        lam, rel = (lam1, loss1) if loss1 <= loss0 else (lam0, loss0)
        return lam, float(_loss(np.array([lam]), a, d, k)[0]), k

    def _identifiability(self, lam: float, loss: float, a: np.ndarray, d: np.ndarray, k: int) -> tuple[float, dict]:
        """Predicted max error of ŷ from how sharply the label structure pins λ down.

        Near the solution the loss (variance of the equal entries S) is ``L(s) ≈ L* + c s²`` in ``s = Δ log λ``;
        ``L*`` is the residual the data leave (float32 rounding of the gradient), so λ is known to
        ``|s| ≲ sqrt(L*/c)`` and ŷ to ``max|∂ŷ/∂log λ| · sqrt(L*/c)``. ``c`` is measured at ``s = ±1 %``; if
        moving λ does not raise the loss (``c ≤ 0``) the scale is not identifiable at all."""
        y = _yhat(np.array([lam]), a, d)[0]
        eq = np.argsort(y)[:k]
        delta = 1e-2
        ys = _yhat(np.array([lam * math.exp(-delta), lam * math.exp(delta)]), a, d)
        l_star = max(float(y[eq].var()), (1e-12 * float(np.abs(y).max())) ** 2)
        c = (min(float(ys[0, eq].var()), float(ys[1, eq].var())) - l_star) / delta**2
        slope = float(np.abs(ys[1] - ys[0]).max()) / (2 * delta)
        err = math.inf if c <= 0 else slope * math.sqrt(l_star / c)
        return err, {"loss_at_solution": loss, "curvature_in_log_scale": c, "dyhat_dlogscale": slope}

    def necessary_condition(self, obs: Observation) -> NecessaryCondition:
        """Check when analytic recovery is impossible for ``obs`` (module docstring: (i)–(iii))."""
        reasons = self.problems(obs)
        if reasons:
            return NecessaryCondition(False, reasons)
        gw, gb = self._gradient(obs)
        if gb is not None:
            if not np.any(gb != 0):
                return NecessaryCondition(False, ["the bias gradient is zero"])
            return NecessaryCondition(True, [], 0.0, {"scale_from": "bias"})
        lam, loss, a, d, k = self._solve_nobias(obs, gw)
        if not math.isfinite(lam):
            return NecessaryCondition(False, [_no_scale_reason(a, self.structure)])
        err, info = self._identifiability(lam, loss, a, d, k)
        info["scale"] = lam
        if err > self.tolerance:
            return NecessaryCondition(
                False,
                [
                    f"the label structure does not fix the feature scale: the equal classes' probabilities barely "
                    f"change with it, so ŷ is determined only to ±{err:.1e} (> {self.tolerance:g}); without a bias "
                    "gradient the smoothing ε / mixup weight are not identifiable here"
                ],
                err,
                info,
            )
        return NecessaryCondition(True, [], err, info)

    def _solve_nobias(self, obs: Observation, gw: np.ndarray):
        W = _np(obs.head_module().weight)
        u = self._direction(gw)
        a, d = W @ u, gw @ u
        lam, loss, k = self.solve_scale(a, d)
        self._last = (u, a, d)
        return lam, loss, a, d, k

    # -- recovery ----------------------------------------------------------------------------------
    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        gw, gb = self._gradient(obs)
        head = obs.head_module()
        details: dict[str, Any] = {}
        if gb is not None:
            if not np.any(gb != 0):
                raise UnsupportedError(self.name, ["the bias gradient is zero: p = y, nothing to recover"])
            h = gw.T @ gb / (gb @ gb)
            z = _np(head.weight) @ h + _np(head.bias)
            soft = torch.from_numpy(_softmax(z) - gb)
            feat = torch.from_numpy(h)
            details["scale_from"] = "bias (closed form)"
        else:
            lam, loss, a, d, k = self._solve_nobias(obs, gw)
            if not math.isfinite(lam):
                raise UnsupportedError(
                    self.name,
                    [_no_scale_reason(a, self.structure) + "; the necessary condition fails for this observation"],
                )
            err, info = self._identifiability(lam, loss, a, d, k)
            if err > self.tolerance:
                raise UnsupportedError(
                    self.name,
                    [
                        f"the label structure does not fix the feature scale (predicted error ±{err:.1e} > "
                        f"{self.tolerance:g}); the necessary condition fails for this observation"
                    ],
                )
            u = self._last[0]
            soft = torch.from_numpy(_yhat(np.array([lam]), a, d)[0])
            feat = torch.from_numpy(lam * u)
            details.update(
                scale_from=f"label structure ({self.structure})", scale=lam, loss=loss, predicted_error=err, **info
            )
        details.update(_describe(soft))
        return LabelResult(
            self.name,
            [int(soft.argmax())],
            soft=soft.float()[None],
            features=feat.float()[None],
            seconds=time.perf_counter() - t0,
            details=details,
        )


def _no_scale_reason(a: np.ndarray, structure: str) -> str:
    scale = max(float(np.abs(a).max()), 1e-300)
    distinct = len(np.unique(np.round(a / scale, 9)))
    if distinct < 3:
        return (
            f"the label structure does not fix the feature scale: the head gives only {distinct} distinct "
            "logit direction(s) over the classes, so the equal label entries stay equal at every scale"
        )
    return (
        f"no feature scale makes the {structure} label structure hold: the update does not come from one "
        "input trained with label smoothing or two-class mixup"
    )


def _describe(soft: torch.Tensor, tol: float = 1e-4) -> dict[str, Any]:
    """Read the structure off a recovered label: smoothing (ε) or two-class mixup (classes, weights)."""
    y = soft.double()
    n = len(y)
    order = torch.argsort(y, descending=True)
    rest1 = y[order[1:]]
    if float(rest1.max() - rest1.min()) <= tol:
        eps = float(rest1.mean()) * n
        return {"structure": "smoothing" if eps > tol else "hard", "epsilon": eps, "class": int(order[0])}
    return {
        "structure": "mixup",
        "classes": [int(order[0]), int(order[1])],
        "weights": [float(y[order[0]]), float(y[order[1]])],
    }
