"""Label counts from a FedAvg update (K local SGD steps) — in the spirit of RLU, Chen & Vikalo, ICML 2024,
"Recovering Labels from Local Updates in Federated Learning" (arXiv:2405.00955), with a replay of the head's
path instead of RLU's auxiliary-data Monte-Carlo simulation.

The server sees ``Δ = θ_K − θ_0``. For the head, ``Δb = −η Σ_t g_b^(t)`` with ``g_b^(t) = p̄^(t) − k^(t)/b`` on the
step's mini-batch, so when the steps cover the client's samples evenly (full-batch steps, or whole epochs)::

    k = B (P̄ − Ḡ_b),   Ḡ_b = −Δb / (η K),   P̄ = (1/K) Σ_t p̄^(t)  (the batch's mean prediction along the path)

``P̄`` is what must be estimated (RLU's "erroneous confidence"). We reuse :mod:`.ilrg_lsq`'s estimator on the mean
local gradient ``Ḡ = −Δ / (ηK)``: the batch's mean embedding from the rows of ``Ḡ_W`` (weighted least squares on
``Ḡ_b``), class-mean embeddings, and iLRG's count system — with the probabilities averaged over the head's path
``W_t = W_0 + (t/K) ΔW``, ``b_t = b_0 + (t/K) Δb`` for ``t = 0..K−1`` (the server knows both ends; the
straight line is exact for K=1 and first order in ``η`` beyond). The body's drift changes the embeddings along
the path; ``Ḡ_W`` already averages them.

**Known or estimated rate**: with ``estimate_lr=True`` the product ``τ = ηK`` is not taken from the protocol but
fixed by the non-negativity of the counts (``τ = max_c −Δb_c / P̄_c``; exact when some class is absent from the
round, an underestimate of the rarest class otherwise — reported). The local batch size only decides whether
the steps cover the samples evenly; uneven coverage is reported as an approximation. Needs a head bias and
the number of samples B. Each call reports one round: :func:`recover_rounds` maps a list of rounds.

**Batch order**: the counts depend only on how often each sample was used (the coverage, from ``K``, the local
batch and B), not on which samples shared a step, so this method does not need the client's mini-batch order
(``details["batch_order"]``). Image attacks that replay the steps do (:mod:`gradleak.protocols`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedError
from ..observation import Observation
from .base import LabelMethod, LabelResult, label_method, need_batch_size
from .ilrg_lsq import ILRGConfig, counts_to_labels, estimate_counts, head_arrays, softmax


@dataclass(frozen=True, kw_only=True)
class FedAvgLabelsConfig:
    """Settings of :class:`FedAvgLabels`."""

    estimate_lr: bool = False  # ignore the protocol's local_lr and estimate η·K from the update
    path_points: int | None = None  # head-path points averaged (default: one per local step, K)
    counts: ILRGConfig = ILRGConfig()


def coverage(obs: Observation) -> tuple[bool, list[int]]:
    """How many local steps used each of the B samples, and whether that is even."""
    B = obs.known_batch_size()
    uses = np.zeros(B, dtype=int)
    for sl in obs.fedavg().batches(B):
        uses[sl] += 1
    return bool((uses == uses[0]).all()), uses.tolist()


@label_method("fedavg")
class FedAvgLabels(LabelMethod):
    """Label counts of one FedAvg round (K local steps); see the module docstring.

    Args:
        config: :class:`FedAvgLabelsConfig`; keywords override its fields.

    Example::

        res = FedAvgLabels().recover(obs)           # obs.protocol = FedAvg(local_steps=5, local_lr=0.05)
        res.details["lr_source"], res.details["counts"]
    """

    paper = (
        "Chen & Vikalo ICML 2024, Recovering Labels from Local Updates in Federated Learning (RLU), "
        "arXiv:2405.00955 — head-path replay variant"
    )

    Config = FedAvgLabelsConfig
    config: FedAvgLabelsConfig

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        need_batch_size(obs, problems)
        if obs.kind != "delta":
            problems.append(
                "this method reads a FedAvg parameter delta; the observation is a FedSGD gradient (use ilrg)"
            )
        if obs.aggregated:
            problems.append(
                f"the update is the mean of {obs.clients} clients' FedAvg deltas and this method replays one "
                "client's local steps (use llg-bias-corrected or ilrg-lsq, which read the delta to first order)"
            )
        if obs.head_grads()[1] is None:
            problems.append(
                f"the head {obs.head!r} has no bias: the counts are read from the bias update (use llg-whitebox)"
            )
        return problems

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        dW, db, W0, b0 = head_arrays(obs)
        assert db is not None and b0 is not None
        K = obs.fedavg().local_steps
        B = obs.known_batch_size()
        if float(np.abs(db).max(initial=0.0)) <= self.config.counts.min_gradient:
            raise UnsupportedError(
                self.name, ["the head's update is (numerically) zero: the round carries no label counts"]
            )
        T = self.config.path_points or K
        ts = np.arange(T) / T
        Ws = W0[None] + ts[:, None, None] * dW[None]  # [T, N, M]
        bs = b0[None] + ts[:, None] * db[None]  # [T, N]

        def probs(h: np.ndarray) -> np.ndarray:  # path-averaged softmax, h [n, M]
            return softmax(np.einsum("nm,tcm->tnc", h, Ws) + bs[:, None, :]).mean(0)

        # τ only scales Ḡ; the estimator's embedding and probabilities do not depend on it
        tau_known = K * obs.fedavg().local_lr
        est = estimate_counts(-dW / tau_known, -db / tau_known, B, probs, config=self.config.counts)
        details: dict[str, Any] = {"local_steps": K, "path_points": T}
        if self.config.estimate_lr:
            pbar = est.mean_prob
            neg = db < 0
            tau = float(np.max(-db[neg] / pbar[neg])) if neg.any() else tau_known
            est = estimate_counts(-dW / tau, -db / tau, B, probs, config=self.config.counts)
            details |= {
                "lr_source": "estimated from the update (non-negative counts)",
                "local_lr_estimated": tau / K,
                "local_lr_protocol": tau_known / K,
            }
        else:
            details |= {"lr_source": "protocol", "local_lr": tau_known / K}
        if not est.rank.system_ok or (self.config.counts.strict and not est.rank.holds):
            raise UnsupportedError(self.name, est.rank.reasons)
        if not est.rank.holds:
            details["warning"] = "rank condition not met: the counts are an approximation"
        even, uses = coverage(obs)
        details |= {
            "counts": est.counts.tolist(),
            "raw_counts": est.raw.round(4).tolist(),
            "rank_condition": est.rank.to_json(),
            "even_coverage": even,
            "batch_order": "not needed: the counts use only how often each sample was used",
        }
        if not even:
            details["note"] = (
                f"local mini-batches use the samples unevenly ({min(uses)}–{max(uses)} times): "
                "counts are weighted by use, an approximation"
            )
        return LabelResult(self.name, counts_to_labels(est.counts), seconds=time.perf_counter() - t0, details=details)


def recover_rounds(observations: Sequence[Observation], method: LabelMethod | None = None) -> list[LabelResult]:
    """One :class:`LabelResult` per round (per observed update), in order."""
    method = method or FedAvgLabels()
    out = []
    for i, obs in enumerate(observations):
        res = method.recover(obs)
        res.details["round"] = i
        out.append(res)
    return out
