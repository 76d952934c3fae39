"""``min-rule-counts`` — a gradleak variant that joins two published rules: GradInversion's min rule for
*which* classes are in the batch (Yin et al., CVPR 2021, arXiv:2104.07586) and LLG's bias counts for *how
many* of each (Wainakh et al., PoPETs 2022, arXiv:2105.09369, the bias-corrected variant of :mod:`.llg`).

Neither paper proposes this combination; it gets its own name. Why it helps on trained models: with a ReLU
before the head, ``∂L/∂W[c] = (1/B) Σ_k (p_kc − y_kc) h_k`` has a negative entry only if class c is in the
batch, whatever the model predicts — a negative entry *proves* the class present, where count estimates drift
on a confident model (their offset, the predicted mass, is unknown). The converse fails: a class the model
predicts confidently leaves ``p − y ≈ 0`` and may show no negative entry. So the *support* is the classes with
a negative entry plus those the bias counts ``x_c = B (1/N − ∂L/∂b_c)`` put at one sample or more; each gets one
label, and the ``B − |support|`` repeats go to them by ``x_c − 1`` (rounded by largest remainders). The min rule
alone returns B distinct classes, so every repeated label costs it one wrong guess. If the support holds more
than B classes, the B lowest min-rule scores are kept; if it is empty, the B lowest scores.

Needs: a known batch size, a head bias, and non-negative head inputs (probed as the min rule does).
Measured (``benchmarks/labels``, trained victims, labels with repeats): see results.md; in a calibration run
(not committed) it was at least as accurate as both rules it joins at B = 8 in every cell and within 0.01 of
the better one at B = 32 / 64.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..observation import Observation
from .base import LabelMethod, LabelResult, label_method, need_batch_size
from .gradinversion_min import GradInversionMinConfig, feature_sign_problems
from .llg import _scaled_grads, counts_to_labels, round_counts


@label_method("min-rule-counts")
class MinRuleCounts(LabelMethod):
    """The classes the min rule or the bias counts show present, one label each, repeats by the bias counts (see
    the module docstring).

    Example::

        obs, _ = simulate(Scenario(batch_size=8))
        MinRuleCounts().recover(obs).labels
    """

    paper = (
        "gradleak variant: min rule (Yin et al. CVPR 2021, arXiv:2104.07586) for the classes present + "
        "LLG bias counts (Wainakh et al. PoPETs 2022, arXiv:2105.09369) for repeats"
    )
    Config = GradInversionMinConfig
    config: GradInversionMinConfig

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        need_batch_size(obs, problems)
        if obs.head_grads()[1] is None:
            problems.append(f"the head {obs.head!r} has no bias: the repeats are counted from the bias gradient")
        return problems + feature_sign_problems(obs, self.config)

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        t0 = time.perf_counter()
        self.check(obs)
        w, b, note = _scaled_grads(obs)
        assert b is not None  # problems() required a head bias
        B, N = obs.known_batch_size(), obs.num_classes
        score = w.min(axis=1)
        estimate = B * (1.0 / N - b)
        negative = score < 0
        support = np.flatnonzero(negative | (estimate >= 1.0))
        if len(support) == 0 or len(support) > B:
            support = np.argsort(score, kind="stable")[:B]
        counts = np.zeros(N, dtype=np.int64)
        counts[support] = 1
        repeats = B - len(support)
        if repeats:
            counts[support] += round_counts(np.maximum(estimate[support] - 1.0, 0.0), repeats)
        return LabelResult(
            self.name,
            counts_to_labels(counts),
            seconds=time.perf_counter() - t0,
            details={
                "present_classes": support.tolist(),
                "negative_entry_classes": np.flatnonzero(negative).tolist(),
                "repeats": repeats,
                "estimated_counts": estimate.round(3).tolist(),
                "update": note,
            },
        )
