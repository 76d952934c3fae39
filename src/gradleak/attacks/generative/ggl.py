"""GGL — Li, Zhang, Liu & Lin, "Auditing Privacy Defenses in Federated Learning via Generative Gradient
Leakage", CVPR 2022, arXiv:2203.15696.

Search the latent space of a generator trained on public data for the image whose update matches
the observed one: ``min_z d(T(∇θL(x̂(z), ŷ)), g*)`` with ``x̂(z) = normalise((G(z) + 1) / 2)`` and ``T``
the attacker's estimate of the client's defense read off the observed update (clipping at its norm,
the sparsity pattern of its zeros). Two optimisers: ``"adam"`` (gradient-based, each latent kept on
the sphere of radius √dim(z), several restarts, the lowest matching loss wins) and ``"cmaes"`` (GGL's
black-box search: CMA-ES rounds of ``population`` candidates, no gradient through the model).
Loss: the paper's squared L2 distance by default. Example::

    res = GGL(prior="out/prior/prior.safetensors").run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import batch_size_of, label_targets, protocol_assumptions, to_result
from ..matching import MatchingConfig, MatchingProblem, MatchResult
from ..steps import Step, StepCallback, no_progress
from .cmaes import CMAES
from .search import Renderer, condition_labels, defense_estimate, get_prior, prior_problems, project_sphere, search


@dataclass(frozen=True, kw_only=True)
class GGLConfig:
    """GGL's settings. ``iterations``: Adam steps per restart, or CMA-ES rounds (each of
    ``population`` model queries; the paper runs 500–800 rounds of 50; CMA-ES runs one search, so
    ``restarts`` applies to Adam only). ``condition`` picks the class input of a conditional prior:
    the recovered labels when the prior has the task's classes (``"auto"``), else random classes —
    set ``"random"`` for a prior whose classes mean something else (out-of-distribution data)."""

    prior: str | None = None
    iterations: int = 1000
    restarts: int = 4
    optimizer: str = "adam"  # "adam" | "cmaes"
    lr: float = 0.1
    warmup: int = 50
    distance: str = "l2"  # the paper's squared gradient distance; "cosine" also works
    tv: float = 0.0
    population: int = 50
    sigma: float = 1.0
    adaptive: bool = True  # apply the estimated defense to the candidate update
    condition: str = "auto"  # class input of a conditional prior: "auto" | "labels" | "random"
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "cmaes"):
            raise InputError(f"GGL optimizer must be 'adam' or 'cmaes', got {self.optimizer!r}")


def latent_problem(obs: Observation, targets: Tensor, cfg: MatchingConfig, adaptive: bool):
    transform, estimate = defense_estimate(obs) if adaptive else (None, {})
    return MatchingProblem(obs, targets, cfg, transform=transform), estimate


@attack("ggl")
class GGL(Attack):
    """GGL's latent search: images generated from a trained prior, the latent optimised to match the update.

    Paper: Li et al. CVPR 2022. Needs: a generative prior of the client's image size (``prior``, from
    ``gradleak train-prior``) and labels (``labels=None``: ``auto``). Main settings (:class:`GGLConfig`):
    ``optimizer`` (``adam`` or ``cmaes``), ``iterations``, ``restarts``, ``prior``, ``condition``."""

    paper = "Li et al. CVPR 2022, arXiv:2203.15696 (generative prior: --prior)"
    Config = GGLConfig

    def problems(self, obs: Observation) -> list[str]:
        return prior_problems(self.config.prior)

    def cost_units(self) -> tuple[int, int]:
        c = self.config  # CMA-ES: one search, `population` candidates a round
        return (c.iterations, c.population) if c.optimizer == "cmaes" else (c.iterations, c.restarts)

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
        R = 1 if c.optimizer == "cmaes" else c.restarts
        Y = condition_labels(G, obs, targets, R, B, c.condition, generator)
        zr = math.sqrt(G.config.z_dim)

        def render(z: Tensor, y: Tensor | None = None) -> Tensor:
            return to_input(G(z, y))

        if c.optimizer == "adam":
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
            Z, match, curve = res.variables, res.match, res.curve
        else:
            Z, match, curve = self._cmaes(problem, render, B, G.config.z_dim, Y, generator, on_step)
        best = int(match.argmin())
        with torch.no_grad():
            x = render(Z[best]) if Y is None else render(Z[best], Y[best])
        result = MatchResult(x, None, match.tolist(), best, curve, c.iterations)
        assumptions = protocol_assumptions(obs) | {
            "prior": getattr(G, "meta", {}).get("training", {}).get("dataset"),
            "defense_estimate": estimate,
            "conditioning": None
            if Y is None
            else ("labels" if c.condition != "random" and G.config.num_classes == obs.num_classes else "random"),
            "model_queries_per_restart": c.iterations * (c.population if c.optimizer == "cmaes" else 1),
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

    def _cmaes(
        self,
        problem: MatchingProblem,
        render,
        B: int,
        zd: int,
        Y: Tensor | None,
        generator: torch.Generator,
        on_step: StepCallback,
    ) -> tuple[Tensor, Tensor, list]:
        c = self.config
        es = CMAES(torch.zeros(B * zd), sigma=c.sigma, popsize=c.population, generator=generator)
        y = None if Y is None else Y[0]

        def loss(z: Tensor) -> Tensor:
            return problem.objective(render(z) if y is None else render(z, y))[0]

        batched = vmap(loss)
        best_z, best_f, curve = es.mean.clone(), float("inf"), []
        for it in range(c.iterations):
            xs = es.ask()
            with torch.no_grad():
                f = batched(xs.float().view(-1, B, zd)).double().nan_to_num(float("inf"))
            es.tell(xs, f)
            i = int(f.argmin())
            if float(f[i]) < best_f:
                best_f, best_z = float(f[i]), xs[i].clone()
            if it % c.log_every == 0 or it + 1 == c.iterations:
                curve.append((it, best_f))
                on_step(Step(it + 1, c.iterations, best_f, "cmaes"))
        Z = best_z.float().view(1, B, zd)
        with torch.no_grad():
            match = problem.objective(render(Z[0]) if y is None else render(Z[0], y))[1].view(1)
        return Z, match, curve
