"""Sum rule for batches, the batch extension of iDLG used by GGL (Li et al. CVPR 2022) and GIFD
(Fang et al. ICCV 2023): ``ŷ = argsort_n(Σ_m ∂L/∂W[n, m])[:B]`` — the B classes whose head-weight
gradient rows sum to the most negative values. Assumes non-negative features and distinct labels."""

from __future__ import annotations

import time

import torch

from ..observation import Observation
from .base import LabelMethod, LabelResult, head_gradient, label_method, need_batch_size


@label_method("sum")
class SumRule(LabelMethod):
    paper = "Li et al. CVPR 2022 (GGL) / Fang et al. ICCV 2023 (GIFD): sum rule"

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        b = need_batch_size(obs, problems)
        if b > obs.num_classes:
            problems.append(
                f"the sum rule returns distinct labels, so it needs batch size ({b}) <= classes "
                f"({obs.num_classes}); use a count strategy for repeated labels"
            )
        return problems

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        gw, _ = head_gradient(obs)
        labels = gw.sum(1).argsort()[: obs.batch_size].tolist()
        return LabelResult(self.name, sorted(labels), seconds=time.perf_counter() - t0)
