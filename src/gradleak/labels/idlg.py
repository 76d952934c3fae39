"""iDLG label recovery — Zhao, Mopuri & Bilen 2020, "iDLG: Improved Deep Leakage from Gradients",
arXiv:2001.02610.

For one sample with cross-entropy, ``∂L/∂W_c = (p_c − y_c) h``: with non-negative features ``h``
only the true class row has non-positive entries, and with a bias ``∂L/∂b_c = p_c − y_c`` is negative
only at the true class. We take ``argmin_c ∂L/∂b_c`` when the head has a bias, else the row whose
sum is the most negative (the same sign argument on ``Σ_m ∂L/∂W_cm``).
"""

from __future__ import annotations

import time

import torch

from ..observation import Observation
from .base import LabelMethod, LabelResult, head_gradient, label_method


@label_method("idlg")
class IDLG(LabelMethod):
    paper = "Zhao et al. 2020, iDLG, arXiv:2001.02610"

    def problems(self, obs: Observation) -> list[str]:
        if obs.batch_size not in (None, 1):
            return [f"iDLG recovers the label of a single sample; this batch has {obs.batch_size}"]
        return []

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        self.check(obs)
        t0 = time.perf_counter()
        gw, gb = head_gradient(obs)
        score = gb if gb is not None else gw.sum(1)
        label = int(score.argmin())
        return LabelResult(
            self.name,
            [label],
            seconds=time.perf_counter() - t0,
            details={"used": "bias" if gb is not None else "weight row sums"},
        )
