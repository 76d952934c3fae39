"""Deep Leakage from Gradients — Zhu, Liu & Han, NeurIPS 2019, arXiv:1906.08935.

Jointly optimise a dummy image and a dummy soft label (softmax of free logits) with L-BFGS to
minimise the squared Euclidean distance between the dummy update and the observed one. DLG needs
no label recovery: the label is read off the optimised soft label (argmax).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..labels import LabelResult
from ..observation import Observation
from .base import Attack, AttackResult, attack
from .common import batch_size_of, to_result
from .matching import MatchingConfig, MatchingProblem, run_matching
from .steps import StepCallback, no_progress


@dataclass(frozen=True, kw_only=True)
class DLGConfig:
    """DLG's settings: L-BFGS (lr 1, up to 20 evaluations per iteration), squared L2 distance, joint
    soft labels; the paper runs 300 iterations."""

    iterations: int = 300
    restarts: int = 1
    lr: float = 1.0
    max_evals: int = 20
    joint_labels: bool = True
    log_every: int = 1


@attack("dlg")
class DLG(Attack):
    """Deep Leakage from Gradients: L-BFGS on dummy images and dummy soft labels, squared L2 distance.

    Paper: Zhu et al. NeurIPS 2019. Needs: any differentiable model and a FedSGD gradient or FedAvg delta;
    it optimises its own labels (``joint_labels``), so given labels are used only with ``joint_labels=False``.
    Main settings (:class:`DLGConfig`): ``iterations`` (300), ``max_evals`` per L-BFGS step (20), ``lr`` (1)."""

    paper = "Zhu et al. NeurIPS 2019, arXiv:1906.08935"
    Config = DLGConfig

    def cost_units(self) -> list[tuple[int, int]]:
        # L-BFGS: up to max_evals evaluations an iteration, restarts one after another
        c = self.config
        return [(c.iterations * c.max_evals * c.restarts, 1)]

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        t0 = time.perf_counter()
        c = self.config
        cfg = MatchingConfig(
            iterations=c.iterations,
            restarts=c.restarts,
            distance="l2",
            optimizer="lbfgs",
            lr=c.lr,
            signed=False,
            schedule="constant",
            lbfgs_max_iter=c.max_evals,
            optimize_labels=c.joint_labels,
            box=False,
            log_every=c.log_every,
        )
        targets = None
        if not c.joint_labels:
            from .common import label_targets

            targets, labels = label_targets(obs, labels, self.name)
        problem = MatchingProblem(obs, targets, cfg)
        match = run_matching(
            problem, batch_size=batch_size_of(obs, labels, self.name), generator=generator, on_step=on_step
        )
        used = (
            match.label_logits.argmax(-1).tolist()
            if match.label_logits is not None
            else (labels.labels if labels else None)
        )
        return to_result(self.name, obs, match, t0, labels=used, restarts=c.restarts, config=self.config_json())
