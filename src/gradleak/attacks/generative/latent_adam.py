"""``latent_adam`` — a gradient-based latent search with GGL's loss: not GGL (which is gradient-free,
:mod:`.ggl`) but the latent stage that GIAS (Jeon, Kim, Lee & Lee, "Gradient Inversion with Generative
Image Prior", NeurIPS 2021, arXiv:2110.14962) and GIFD's stage 0 (:mod:`.gifd`) run before their later
stages: Adam on the latent ``z`` through the generator and the model's gradient.

``min_z d(T(∇θL(x̂(z), ŷ)), g*)`` with ``x̂(z) = normalise((G(z) + 1) / 2)``, ``T`` the attacker's
estimate of the client's defense read off the observed update (clipping at its norm, the sparsity
pattern of its zeros), ``d`` GGL's squared L2 distance by default. Each latent is kept on the sphere
of radius √dim(z) (as GIFD's stage 0), several restarts, cosine schedule with warm-up; the restart
with the lowest matching loss wins. Example::

    res = LatentAdam(prior="out/prior/prior.safetensors").run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import batch_size_of, label_targets, protocol_assumptions, to_result
from ..matching import MatchingConfig, MatchResult
from ..steps import StepCallback, no_progress
from .search import Renderer, condition_labels, get_prior, latent_problem, prior_problems, project_sphere, search


@dataclass(frozen=True, kw_only=True)
class LatentAdamConfig:
    """Settings of the Adam latent search. ``iterations``: Adam steps per restart (each one gradient
    query). ``condition`` picks the class input of a conditional prior: the recovered labels when the
    prior has the task's classes (``"auto"``), else random classes — set ``"random"`` for a prior whose
    classes mean something else (out-of-distribution data)."""

    prior: str | None = None
    iterations: int = 1000
    restarts: int = 4
    lr: float = 0.1
    warmup: int = 50
    distance: str = "l2"  # GGL's squared gradient distance; "cosine" also works
    tv: float = 0.0
    adaptive: bool = True  # apply the estimated defense to the candidate update
    condition: str = "auto"  # class input of a conditional prior: "auto" | "labels" | "random"
    log_every: int = 10


@attack("latent_adam")
class LatentAdam(Attack):
    """Adam latent search with GGL's loss and defense estimate (GIAS's latent stage; not GGL, which is
    gradient-free: ``ggl``).

    Paper: Jeon et al. NeurIPS 2021 (GIAS, latent stage); loss from Li et al. CVPR 2022 (GGL). Needs: a
    generative prior of the client's image size (``prior``, from ``gradleak train-prior``) and labels
    (``labels=None``: ``auto``). Main settings (:class:`LatentAdamConfig`): ``iterations``, ``restarts``,
    ``lr``, ``prior``, ``condition``."""

    paper = "GIAS latent stage, Jeon et al. NeurIPS 2021, arXiv:2110.14962, with GGL's loss (generative prior: --prior)"
    Config = LatentAdamConfig

    def problems(self, obs: Observation) -> list[str]:
        return prior_problems(self.config.prior)

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
        G = get_prior(c.prior, self.name)
        targets, labels = label_targets(obs, labels, self.name)
        B = batch_size_of(obs, labels, self.name)
        cfg = MatchingConfig(
            iterations=c.iterations,
            restarts=c.restarts,
            distance=c.distance,
            lr=c.lr,
            signed=False,
            schedule="cosine",
            warmup=min(c.warmup, c.iterations // 10),
            tv=c.tv,
            box=False,
            log_every=c.log_every,
        )
        problem, estimate = latent_problem(obs, targets, cfg, c.adaptive)
        to_input = Renderer(obs, G.config.channels)
        R = c.restarts
        Y = condition_labels(G, obs, targets, R, B, c.condition, generator)
        zr = math.sqrt(G.config.z_dim)

        def render(z: Tensor, y: Tensor | None = None) -> Tensor:
            return to_input(G(z, y))

        Z0 = project_sphere(torch.randn(R, B, G.config.z_dim, generator=generator), zr)
        res = search(
            problem,
            render,
            Z0,
            cfg=cfg,
            extra=Y,
            project=lambda z: project_sphere(z, zr),
            on_step=on_step,
            stage="latent",
        )
        best = int(res.match.argmin())
        with torch.no_grad():
            x = render(res.variables[best]) if Y is None else render(res.variables[best], Y[best])
        result = MatchResult(x, None, res.match.tolist(), best, res.curve, c.iterations)
        assumptions = protocol_assumptions(obs) | {
            "prior": getattr(G, "meta", {}).get("training", {}).get("dataset"),
            "defense_estimate": estimate,
            "conditioning": None
            if Y is None
            else ("labels" if c.condition != "random" and G.config.num_classes == obs.num_classes else "random"),
            "gradient_queries": c.iterations * R,
        }
        return to_result(
            self.name,
            obs,
            result,
            t0,
            labels=labels.labels,
            restarts=R,
            config=self.config_json(),
            assumptions=assumptions,
        )
