"""What a DP defense guarantees against reconstruction: ε(δ), and a bound on the success of *any* attack.

Reconstruction robustness (ReRo; Balle, Cherubin & Hayes, S&P 2022) with the bound of Hayes, Mahloujifar &
Balle, "Bounding Training Data Reconstruction in DP-SGD", NeurIPS 2023 (arXiv:2302.07225), in the closed and
numerical forms of Kaissis, Hayes, Ziller & Rueckert, "Bounding data reconstruction attacks with the hypothesis
testing interpretation of differential privacy", 2023 (arXiv:2307.03928).

Threat model (both papers): an *informed* adversary knows everything that went into the release except one
target record — the model, the other records, the defense — and knows a prior π over the target: a finite set of
candidates. ``kappa`` (κ) is the prior's largest probability, the chance of guessing right without the release
(``1/K`` for K equally likely candidates). The adversary sees the release and names one candidate; the bound
holds for every such adversary, however it reconstructs and however it then picks the candidate.

If ``P`` is the release without the target and ``Q`` with it, the adversary's guess is right with probability at
most ``B(κ) = sup {Q(E) : P(E) ≤ κ}`` — the power of the most powerful test of level κ (Neyman–Pearson), i.e.
``1 − f(κ)`` for the trade-off function ``f`` of the pair. For the Gaussian mechanism with noise multiplier σ
(sensitivity-1 query, noise std σ) run ``T`` times on the whole data, the release is μ-GDP with ``μ = √T/σ`` and
``B(κ) = Φ(Φ⁻¹(κ) + μ)`` in closed form. With Poisson subsampling at rate ``q < 1``, one step is also closed form,
``B(κ) = (1 − q)κ + q Φ(Φ⁻¹(κ) + 1/σ)``; ``T > 1`` such steps are composed numerically (see
:func:`subsampled_gaussian_bound`). The add/remove adjacency is used throughout (``P`` lacks the target).

Not implemented: the lower bound of Guo et al. (ICML 2022, arXiv:2201.12383) on the MSE of *unbiased*
reconstructions — gradleak's attacks are not unbiased estimators, so it would not bound them.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

from ..errors import InputError
from .dpsgd import dp_epsilon

__all__ = [
    "KAPPAS",
    "Guarantee",
    "dp_guarantees",
    "gaussian_reconstruction_bound",
    "reconstruction_bound",
    "subsampled_gaussian_bound",
]

#: the priors the audit report shows the bound at: 1 in 10 and 1 in 1000 candidates
KAPPAS = (0.1, 0.001)
_N = NormalDist()
_FFT_POINTS = 1 << 22  # the composed grid's size: the numerical bound's slack is exp(steps · grid step)
_TAIL = 1e-12  # the chance, under Q, that one of the steps falls beyond the grid (added to the upper bound)


def _check_kappa(kappa: float) -> None:
    if not 0 < kappa < 1:
        raise InputError(f"the prior success probability kappa must be in (0, 1), got {kappa}")


def gaussian_reconstruction_bound(kappa: float, mu: float) -> float:
    """``Φ(Φ⁻¹(κ) + μ)``: the most any attack's guess is right against a μ-GDP release (prior success ``κ``)."""
    _check_kappa(kappa)
    if not mu >= 0:
        raise InputError(f"mu must be >= 0, got {mu}")
    return _N.cdf(_N.inv_cdf(kappa) + mu) if math.isfinite(mu) else 1.0


def reconstruction_bound(kappa: float, noise: float, *, sample_rate: float = 1.0, steps: int = 1) -> float:
    """The most any reconstruction attack's guess is right (prior success ``kappa``) against ``steps`` releases of
    the Gaussian mechanism with noise multiplier ``noise``, each including the target with probability
    ``sample_rate`` (Poisson subsampling; 1.0: always).

    Exact where a closed form exists (``sample_rate == 1``, or ``steps == 1``); else the numerical upper bound of
    :func:`subsampled_gaussian_bound`. ``noise == 0`` is no guarantee (1.0).
    """
    _check_kappa(kappa)
    if not (noise >= 0 and math.isfinite(noise)):
        raise InputError(f"the noise multiplier must be >= 0, got {noise}")
    if not 0 < sample_rate <= 1:
        raise InputError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if noise == 0:
        return 1.0
    if sample_rate == 1:
        return gaussian_reconstruction_bound(kappa, math.sqrt(steps) / noise)
    if steps == 1:
        return (1 - sample_rate) * kappa + sample_rate * gaussian_reconstruction_bound(kappa, 1 / noise)
    return subsampled_gaussian_bound(kappa, noise, sample_rate=sample_rate, steps=steps)[1]


def subsampled_gaussian_bound(kappa: float, noise: float, *, sample_rate: float, steps: int) -> tuple[float, float]:
    """``(lower, upper)`` around ``B(κ)`` for ``steps`` Poisson-subsampled Gaussian releases, computed numerically.

    The privacy loss ``ℓ = log dQ/dP`` of one step is ``log(1 − q + q·exp(x/σ − 1/(2σ²)))`` for ``x ~ P = N(0, 1)``;
    it is increasing in ``x``, so its distribution under ``P`` is known exactly on a grid. Rounding each step's
    loss *up* to the grid (and the rare ``x`` below the grid up to its first point) can only raise ``B``, rounding
    it *down* only lower it; both rounded losses are summed over the steps by FFT convolution, and ``B`` is the
    knapsack ``sup E_P[e^ℓ φ]`` over tests ``E_P[φ] ≤ κ`` (largest losses first). The chance that a step's ``x``
    falls above the grid is added to ``upper``. ``upper / lower ≤ exp(steps · grid step)``: the slack grows with
    ``steps`` (about 1% at 100 steps for σ = 1, q = 0.01).
    """
    _check_kappa(kappa)
    if not (noise > 0 and math.isfinite(noise)) or not 0 < sample_rate <= 1 or steps < 1:
        raise InputError(f"need noise > 0, sample_rate in (0, 1] and steps >= 1; got {noise}, {sample_rate}, {steps}")
    mu, q = 1 / noise, sample_rate
    log_q, log_1mq = math.log(q), (math.log1p(-q) if q < 1 else -math.inf)

    def loss(x: np.ndarray) -> np.ndarray:
        return np.logaddexp(log_1mq, log_q + mu * x - mu * mu / 2)

    def x_of(v: np.ndarray) -> np.ndarray:  # the inverse of loss(), for v > log(1 − q)
        a = v + np.log1p(-np.exp(log_1mq - v)) - log_q
        return (a + mu * mu / 2) / mu

    x_hi = mu - float(ndtri(_TAIL / steps))  # Q(x > x_hi) ≤ Φ̄(x_hi − μ) = TAIL/steps
    x_lo = min(-x_hi, float(ndtri(_TAIL)))
    lo, hi = (float(v) for v in loss(np.array([x_lo, x_hi])))
    n = max(2, min(1 << 16, (_FFT_POINTS - 1) // steps + 1))
    h = (hi - lo) / (n - 1)
    v = lo + h * np.arange(n)
    cdf = np.concatenate([[0.0], ndtr(x_of(v[1:]))])
    cdf[0] = ndtr(x_lo)
    p = np.diff(cdf, prepend=0.0)  # p[j]: P(ℓ in (v[j-1], v[j]]), p[0]: P(x <= x_lo)
    q_up = p * np.exp(v)  # e^ℓ rounded up
    q_down = np.concatenate([[0.0], p[1:] * np.exp(v[:-1])])  # rounded down (nothing below the grid)
    size = steps * (n - 1) + 1
    fft = 1 << (size - 1).bit_length()

    def compose(m: np.ndarray) -> np.ndarray:
        return np.clip(np.fft.irfft(np.fft.rfft(m, fft) ** steps, fft)[:size], 0.0, None)

    p_t = compose(p)
    tail_q = float(  # Q(x > x_hi) of one step: (1 − q)Φ̄(x_hi) + qΦ̄(x_hi − μ)
        (1 - q) * np.exp(log_ndtr(-x_hi)) + q * np.exp(log_ndtr(mu - x_hi))
    )
    upper = _knapsack(p_t, compose(q_up), kappa) + steps * tail_q
    lower = _knapsack(p_t, compose(q_down), kappa)
    return min(lower, 1.0), min(upper, 1.0)


def _knapsack(p: np.ndarray, q: np.ndarray, kappa: float) -> float:
    """``Σ q_k φ_k`` for the test ``φ`` that takes bins from the last (largest loss) on until ``Σ p_k φ_k = κ``:
    the supremum over tests where ``q_k / p_k`` increases with ``k``, a feasible test (a lower bound) otherwise."""
    p, q = p[::-1], q[::-1]
    cum = np.cumsum(p)
    k = int(np.searchsorted(cum, kappa))  # the first bin that does not fit whole
    if k >= len(p):
        return float(q.sum())
    room = kappa - (cum[k - 1] if k else 0.0)
    return float(q[:k].sum() + (q[k] * room / p[k] if p[k] > 0 else 0.0))


@dataclass(frozen=True)
class Guarantee:
    """What one DP defense of a round guarantees the protected unit (an ``example`` for DP-SGD, the whole
    ``client`` for DP-FedAvg) against the server that saw the round.

    ``noise`` is the Gaussian noise multiplier relative to the clipping norm (the sensitivity), ``sample_rate`` the
    chance the unit takes part in each of the ``steps`` noisy releases, ``epsilon`` the ε at ``delta`` of the round
    from Opacus' RDP accountant (``None``: unbounded, or Opacus not installed). :meth:`bound` is
    :func:`reconstruction_bound` for them.
    """

    defense: str
    unit: str
    noise: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float | None
    note: str

    def bound(self, kappa: float) -> float:
        return reconstruction_bound(kappa, self.noise, sample_rate=self.sample_rate, steps=self.steps)

    def to_json(self, kappas: Sequence[float] = KAPPAS) -> dict[str, Any]:
        return {
            "defense": self.defense,
            "unit": self.unit,
            "noise": self.noise,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "note": self.note,
            "bounds": [{"kappa": k, "bound": self.bound(k)} for k in kappas],
        }


def dp_guarantees(records: Sequence[dict[str, Any]]) -> list[Guarantee]:
    """The guarantees the round's defense records (``Observation.defenses``) give, in record order.

    - ``dpsgd``: per example, noise ``noise``, its ``sample_rate`` over its ``steps`` local steps. Under secure
      aggregation the other clients' updates are independent of this client's data, so the guarantee holds for
      the mean as well (post-processing); it does not count the other clients' noise.
    - ``dpfedavg``: per client, one release of noise ``noise`` (the server adds ``noise·clip/N`` to the mean of
      N clipped updates), without amplification by client sampling: the server knows who took part. Only a
      record whose noise was added at aggregation (it has ``noise_std``) gives a guarantee.
    """
    out = []
    for r in records:
        name = r.get("name")
        if name == "dpsgd":
            noise, q, delta = _number(r, "noise"), _number(r, "sample_rate"), _number(r, "delta")
            steps = int(_number(r, "steps"))
            note = f"per example: {steps} DP-SGD step(s), sampling rate {q:g}"
        elif name == "dpfedavg" and "noise_std" in r:
            noise, q, steps, delta = _number(r, "noise"), 1.0, 1, _number(r, "delta")
            note = f"per client (user-level): one noisy aggregate of {int(_number(r, 'clients'))} client(s)"
        else:
            continue
        if noise < 0 or not 0 < q <= 1 or steps < 1 or not 0 < delta < 1:
            raise InputError(f"the {name} defense record is inconsistent: {r}")
        unit = "example" if name == "dpsgd" else "client"
        out.append(Guarantee(name, unit, noise, q, steps, delta, _epsilon(noise, q, steps, delta), note))
    return out


def _epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """ε from Opacus' RDP accountant; ``None`` when unbounded or when Opacus (``gradleak[dp]``) is not installed
    (a file's records can be audited without it: the bound does not need it)."""
    if importlib.util.find_spec("opacus") is None:
        return None
    eps = dp_epsilon(noise, sample_rate, steps, delta)
    return eps if math.isfinite(eps) else None


def _number(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"the {record.get('name')} defense record needs a number {key!r}, got {value!r}")
    return float(value)
