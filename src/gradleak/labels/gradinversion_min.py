"""GradInversion's min rule — Yin et al., CVPR 2021, "See through Gradients: Image Batch Recovery via
GradInversion", arXiv:2104.07586 (PAPERS.md §1).

``score[n] = min_m ∂L/∂W[n, m]``; the labels are the B classes with the lowest scores. With non-negative
features (a ReLU before the head), ``∂L/∂W[n] = (1/B) Σ_k (p_kn − y_kn) h_k`` has a negative entry only if
class n is in the batch, and the most negative entry is driven by one sample of that class — so the rule
is robust to the other samples' mass, but it returns **distinct** labels.

Assumptions (checked): the batch size is known, ``B ≤ N``, and the head's input is non-negative (probed with
dummy inputs through the model). Not checkable from the update: labels are unique in the batch — with
repeats the rule still returns B distinct classes, so a repeated class costs one wrong label per repeat;
use a count method (``llg-*``) when repeats are plausible.
Paper: 99.56 % label restoration at batch 8 on a trained ImageNet ResNet-50 (non-repeating labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..observation import Observation
from .base import LabelMethod, LabelResult, head_gradient, label_method, need_batch_size
from .probe import probe


@dataclass(frozen=True, kw_only=True)
class GradInversionMinConfig:
    """``probe_inputs``: dummy inputs used to check ``h ≥ 0`` (0: skip); ``seed``: their seed."""

    probe_inputs: int = 4
    seed: int = 0


def feature_sign_problems(obs: Observation, cfg: GradInversionMinConfig) -> list[str]:
    """The min rule's sign argument needs non-negative head inputs: checked on ``cfg.probe_inputs`` dummy inputs
    (0: not checked)."""
    if not cfg.probe_inputs:
        return []
    low = float(probe(obs, cfg.probe_inputs, generator=torch.Generator().manual_seed(cfg.seed)).features.min())
    if low >= 0:
        return []
    return [
        f"the head's input takes negative values (min {low:.3g} on dummy inputs): the min "
        "rule's sign argument needs non-negative features (a ReLU before the head)"
    ]


@label_method("gradinversion-min")
class GradInversionMin(LabelMethod):
    """The min rule (Yin et al. 2021). ``probe_inputs``: dummy inputs used to check ``h ≥ 0`` (0: skip).

    Example::

        obs, _ = simulate(Scenario(batch_size=8))
        GradInversionMin().recover(obs).labels
    """

    paper = "Yin et al. CVPR 2021, See through Gradients (GradInversion), arXiv:2104.07586: min rule"

    Config = GradInversionMinConfig
    config: GradInversionMinConfig

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        b = need_batch_size(obs, problems)
        if b > obs.num_classes:
            problems.append(
                f"the min rule returns distinct labels, so it needs batch size ({b}) <= classes "
                f"({obs.num_classes}); a batch this large must repeat labels: use a count method "
                "(llg-whitebox, llg-bias-corrected, llg-simple)"
            )
        return problems + feature_sign_problems(obs, self.config)

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        t0 = time.perf_counter()  # the check's probe counts: it is part of using the rule safely
        self.check(obs)
        gw, _ = head_gradient(obs)
        score = gw.min(dim=1).values
        labels = score.argsort()[: obs.batch_size].tolist()
        n_neg = int((score < 0).sum())
        details: dict[str, Any] = {"classes_with_negative_entries": n_neg}
        if n_neg < obs.known_batch_size():
            details["note"] = (
                f"only {n_neg} classes show a negative entry for a batch of {obs.batch_size}: "
                "labels probably repeat; the extra labels are guesses"
            )
        return LabelResult(self.name, sorted(labels), seconds=time.perf_counter() - t0, details=details)
