"""Label counts with repeats — the LLG family of Wainakh et al. 2022, "User-Level Label Leakage from
Gradients in Federated Learning", PoPETs 2022(2), arXiv:2105.09369 (PAPERS.md §1).

Under the batch-mean cross-entropy, the head's gradients are, per class c (``n_c`` samples of class c,
``P_c = Σ_k p_kc`` the batch's predicted mass, ``h_k`` the features)::

    ∂L/∂b_c = (P_c − n_c) / B                      ∂L/∂W_c = (1/B) Σ_k (p_kc − y_kc) h_k

so each sample of class c moves its class's gradient by a fixed *impact* (−1/B on the bias; about
−|h|/B on a weight row) on top of an *offset* (the predicted mass). LLG's two properties: classes in the
batch have negative gradients, and the magnitude grows with the count. The three variants differ in how
they know impact and offset:

``llg-simple`` (the paper's LLG, gradient only, no bias needed)
    ``g_c = Σ_m ∂L/∂W[c, m]``. Each negative class gets one label; the impact is
    ``m = (1 + 1/N) / B · Σ_{g_c<0} g_c``; it is subtracted from those classes, then the class with the lowest
    ``g_c`` gets another label and pays ``m`` again, until B labels. (breaching's version subtracts the impact
    from the wrong class in that loop; here it goes to the chosen class.) Assumes ``h ≥ 0`` and a batch size.
``llg-bias-corrected`` (gradient only, needs a bias)
    The bias gradient gives the count up to the offset exactly: ``n_c = P_c − B ∂L/∂b_c``. With no model
    knowledge the offset is the uniform prior ``P_c ≈ B/N`` (an untrained model's near-uniform prediction),
    so ``x_c = B (1/N − ∂L/∂b_c)``, rounded to integers summing to B (nearest by largest remainders).
``llg-whitebox`` (LLG* — the model is known, bias optional)
    The offset (and without a bias, the impact) are measured with dummy inputs from the data range through
    the model (:mod:`.probe`): ``P_c ≈ B · mean p̃_c``; with a bias ``x_c = B (mean p̃_c − ∂L/∂b_c)``;
    without, the weight rows are projected on the mean dummy feature ``h̄``:
    ``x_c = B (mean(p̃_c h̃·h̄) − ∂L/∂W_c·h̄) / mean(h̃·h̄)``; rounded as above.

Assumptions they share: a known batch size, FedSGD (a FedAvg delta is used as ``−Δ / (lr · K)``, first order
in the local rate), an untrained or briefly trained model — a well-trained model predicts its batch, so
``P_c ≈ n_c`` and the gradient carries little count information (the paper's "early stages of training").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..observation import Observation
from ..protocols import FedAvg
from .base import LabelMethod, LabelResult, label_method, need_batch_size
from .probe import probe


def round_counts(x: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total`` nearest to ``x`` in squared error (largest remainders)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    n = np.floor(x).astype(np.int64)
    while n.sum() > total:  # too many: drop where the rounding gained least
        cand = np.where(n > 0, x - n, np.inf)
        n[int(np.argmin(cand))] -= 1
    short = total - int(n.sum())
    if short > 0:
        gain = x - n  # adding one costs (1 − 2·gain); pick largest gains,
        for _ in range(short):  # a class may take several
            c = int(np.argmax(gain))
            n[c] += 1
            gain[c] -= 1.0
    return n


def counts_to_labels(n: np.ndarray) -> list[int]:
    return [int(c) for c in np.repeat(np.arange(len(n)), n)]


def _scaled_grads(obs: Observation) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The head's batch-mean gradient in float64 numpy; FedAvg: −Δ / (lr · K) (first-order)."""
    gw, gb = obs.head_grads()
    w = gw.detach().cpu().numpy().astype(np.float64)
    b = None if gb is None else gb.detach().cpu().numpy().astype(np.float64)
    if isinstance(obs.protocol, FedAvg):
        k = obs.protocol.local_steps * obs.protocol.local_lr
        return -w / k, None if b is None else -b / k, "FedAvg delta read as −Δ/(lr·K): first order in lr"
    return w, b, "FedSGD gradient"


class _Count(LabelMethod):
    needs_bias = False

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        need_batch_size(obs, problems)
        if self.needs_bias and obs.head_grads()[1] is None:
            problems.append(
                f"the head {obs.head!r} has no bias: {self.name} reads counts from the bias gradient; "
                "use llg-whitebox or llg-simple"
            )
        return problems


@label_method("llg-simple")
class LLGSimple(_Count):
    """LLG (Wainakh et al. 2022): weight-gradient row sums, impact from the negative classes. No model use."""

    paper = "Wainakh et al. PoPETs 2022, User-Level Label Leakage from Gradients (LLG), arXiv:2105.09369"

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        w, _, note = _scaled_grads(obs)
        B, N = obs.known_batch_size(), obs.num_classes
        g = w.sum(1)
        neg = np.flatnonzero(g < 0)
        if len(neg) > B:
            neg = neg[np.argsort(g[neg])[:B]]
        labels = [int(c) for c in neg]
        impact = (1 + 1 / N) / B * float(g[g < 0].sum()) if len(neg) else 0.0
        g = g.copy()
        g[neg] -= impact
        while len(labels) < B:
            c = int(np.argmin(g))
            labels.append(c)
            g[c] -= impact
        return LabelResult(
            self.name,
            sorted(labels),
            seconds=time.perf_counter() - t0,
            details={"impact": impact, "negative_classes": len(neg), "update": note},
        )


@label_method("llg-bias-corrected")
class LLGBiasCorrected(_Count):
    """Counts from the bias gradient with the exact 1/B impact and a uniform offset. No model use."""

    paper = "Wainakh et al. 2022 (LLG), bias variant with exact impact (cf. breaching 'bias-corrected')"
    needs_bias = True

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        _, b, note = _scaled_grads(obs)
        assert b is not None  # needs_bias: check() found the bias gradient
        B, N = obs.known_batch_size(), obs.num_classes
        x = B * (1.0 / N - b)
        n = round_counts(x, B)
        return LabelResult(
            self.name,
            counts_to_labels(n),
            seconds=time.perf_counter() - t0,
            details={"estimated_counts": x.round(3).tolist(), "update": note},
        )


@dataclass(frozen=True, kw_only=True)
class LLGWhiteboxConfig:
    """``probe_inputs``: dummy inputs (default max(B, 64)); ``seed``: their seed."""

    probe_inputs: int | None = None
    seed: int = 0


@label_method("llg-whitebox")
class LLGWhitebox(_Count):
    """LLG* (Wainakh et al. 2022): offset and impact measured with dummy inputs through the known model.

    Args:
        probe_inputs: dummy inputs (default: max(B, 64), one batch so BatchNorm in train mode sees a batch).
        seed: seed of the dummy inputs.
    """

    paper = "Wainakh et al. PoPETs 2022 (LLG*, white-box impact/offset estimate), arXiv:2105.09369"

    Config = LLGWhiteboxConfig
    config: LLGWhiteboxConfig

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        w, b, note = _scaled_grads(obs)
        B = obs.known_batch_size()
        n_probe = self.config.probe_inputs or max(B, 64)
        pr = probe(obs, n_probe, generator=generator or torch.Generator().manual_seed(self.config.seed))
        p = pr.probs.numpy()
        if b is not None:
            x = B * (p.mean(0) - b)
            used = "bias gradient, offset from dummy softmax"
        else:
            h = pr.features.numpy()
            hbar = h.mean(0)
            s = h @ hbar  # per-dummy projection on the mean feature
            x = B * ((p * s[:, None]).mean(0) - w @ hbar) / s.mean()
            used = "weight gradient projected on the mean dummy feature"
        n = round_counts(x, B)
        return LabelResult(
            self.name,
            counts_to_labels(n),
            seconds=time.perf_counter() - t0,
            details={"estimated_counts": x.round(3).tolist(), "used": used, "update": note, "probe_inputs": n_probe},
        )
