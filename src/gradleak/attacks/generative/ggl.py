"""GGL — Li, Zhang, Liu & Lin, "Auditing Privacy Defenses in Federated Learning via Generative Gradient
Leakage", CVPR 2022, arXiv:2203.15696.

A gradient-free search of a bounded latent space: ``min_z d(T(∇θL(x̂(tanh z), ŷ)), g*)`` with
``x̂(w) = normalise((G(w) + 1) / 2)``, ``T`` the attacker's estimate of the client's defense read off
the observed update (clipping at its norm, the sparsity pattern of its zeros) and ``d`` the squared
L2 gradient distance. CMA-ES (:mod:`.cmaes`) proposes ``population`` latents a round from a Gaussian
centred at 0 with step size ``sigma``; each is scored by one evaluation of the model's gradient, no
gradient flows through the model or the generator — which is what makes GGL work through
non-differentiable defenses. Every candidate passes through ``tanh``, so the generator only ever sees
latents in the box ``(−1, 1)^dim(z)``, and the best latent seen is returned. One search (the official
code's ``n_trials=1``).

Defaults from the official code (github.com/zhuohangli/GGL, ``NGReconstructor`` used by
``imagenet_biggan.py --ng_method CMA``; read for these notes, not copied): latent initialised at 0,
bounded by ``tanh`` (``use_tanh=True``), 50 candidates a round (``num_samples``), 500 rounds
(``--budget 500``; the paper runs 500–800), CMA step size 1.0 (nevergrad's default for an array
parameter), loss ``Σ_layers ‖ĝ − g*‖² / #layers`` (a constant factor, irrelevant to CMA-ES's ranking).
Deviation: nevergrad's CMA adapts with its own population (4 + ⌊3 ln n⌋) while 50 candidates are
asked a round; here a round is one CMA-ES generation of ``population`` candidates. The full budget
(25,000 gradient evaluations per image) is far beyond a CPU audit: ``iterations × population`` is
the number of gradient queries; the benchmark runs 100 (10 × 10) to match the other attacks. The
gradient-based variant of the latent search is ``latent_adam`` (:mod:`.latent_adam`). Example::

    res = GGL(prior="out/prior/prior.safetensors").run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import batch_size_of, label_targets, protocol_assumptions, to_result
from ..matching import MatchingConfig, MatchingProblem, MatchResult
from ..steps import Step, StepCallback, no_progress
from .cmaes import CMAES
from .search import Renderer, condition_labels, get_prior, latent_problem, prior_problems


@dataclass(frozen=True, kw_only=True)
class GGLConfig:
    """GGL's settings (official code's defaults). ``iterations``: CMA-ES rounds, each of ``population``
    candidates, one gradient query each. ``sigma``: CMA-ES's initial step size in the unbounded latent.
    ``condition`` picks the class input of a conditional prior: the recovered labels when the prior has
    the task's classes (``"auto"``), else random classes — set ``"random"`` for a prior whose classes
    mean something else (out-of-distribution data)."""

    prior: str | None = None
    iterations: int = 500
    population: int = 50
    sigma: float = 1.0
    distance: str = "l2"  # the paper's squared gradient distance; "cosine" also works
    adaptive: bool = True  # apply the estimated defense to the candidate update
    condition: str = "auto"  # class input of a conditional prior: "auto" | "labels" | "random"
    log_every: int = 10


@dataclass
class LatentSearch:
    """The best bounded latent [B, z_dim] (in ``(−1, 1)``), its matching distance, its class inputs and
    the loss curve."""

    latent: Tensor
    match: float
    labels: Tensor | None
    curve: list[tuple[int, float]]


@attack("ggl")
class GGL(Attack):
    """GGL: gradient-free CMA-ES search of a generator's tanh-bounded latent space for the image whose
    update matches the observed one, against the estimated defense.

    Paper: Li et al. CVPR 2022. Needs: a generative prior of the client's image size (``prior``, from
    ``gradleak train-prior``) and labels (``labels=None``: ``auto``). Main settings (:class:`GGLConfig`):
    ``iterations`` (rounds), ``population``, ``sigma``, ``prior``, ``condition``."""

    paper = "Li et al. CVPR 2022, arXiv:2203.15696: CMA-ES over a tanh-bounded latent (generative prior: --prior)"
    Config = GGLConfig

    def problems(self, obs: Observation) -> list[str]:
        return prior_problems(self.config.prior)

    def cost_units(self) -> list[tuple[int, int]]:
        return [(self.config.iterations, self.config.population)]

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
        targets, labels = label_targets(obs, labels, self.name)
        B = batch_size_of(obs, labels, self.name)
        cfg = MatchingConfig(iterations=c.iterations, restarts=1, distance=c.distance, box=False)
        problem, estimate = latent_problem(obs, targets, cfg, c.adaptive)
        found = self.search_latent(problem, obs, targets, B, generator=generator, on_step=on_step)
        G = get_prior(c.prior, self.name)
        to_input = Renderer(obs, G.config.channels)
        with torch.no_grad():
            x = to_input(G(found.latent, found.labels))
        result = MatchResult(x, None, [found.match], 0, found.curve, c.iterations)
        assumptions = protocol_assumptions(obs) | {
            "prior": getattr(G, "meta", {}).get("training", {}).get("dataset"),
            "defense_estimate": estimate,
            "conditioning": None
            if found.labels is None
            else ("labels" if c.condition != "random" and G.config.num_classes == obs.num_classes else "random"),
            "gradient_queries": c.iterations * c.population,
        }
        return to_result(
            self.name,
            obs,
            result,
            t0,
            labels=labels.labels,
            restarts=1,
            config=self.config_json(),
            assumptions=assumptions,
        )

    def search_latent(
        self,
        problem: MatchingProblem,
        obs: Observation,
        targets: Tensor,
        B: int,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> LatentSearch:
        """CMA-ES over ``z`` [B·z_dim], every candidate rendered from ``tanh(z)``; the best one seen."""
        c = self.config
        G = get_prior(c.prior, self.name)
        to_input = Renderer(obs, G.config.channels)
        zd = G.config.z_dim
        Y = condition_labels(G, obs, targets, 1, B, c.condition, generator)
        y = None if Y is None else Y[0]
        es = CMAES(torch.zeros(B * zd), sigma=c.sigma, popsize=c.population, generator=generator)

        def loss(z: Tensor) -> Tensor:
            return problem.objective(to_input(G(torch.tanh(z), y)))[1]

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
        return LatentSearch(torch.tanh(best_z.float().view(B, zd)), best_f, y, curve)
