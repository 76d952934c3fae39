"""GIFD — Fang, Chen, Wang, Wang & Xia, "GIFD: A Generative Gradient Inversion Method with Feature
Domain Optimization", ICCV 2023, arXiv:2308.04699.

Stage 0 is a latent search (``latent_adam``: Adam with a cosine-with-warm-up schedule, each latent projected
back onto its sphere). Each later stage k freezes the generator's feature map ``h_k`` reached so far as
the centre ``h⁰`` and optimises ``h_k`` itself, projecting ``h_k − h⁰`` after every step onto the l1 ball
of radius ``r_k`` (per sample; exact projection of Duchi et al. 2008), then hands ``h_k`` on to the next
layer. Leaving the latent space lets the output reach images the generator cannot produce — including
images from outside the prior's training distribution. Loss (official code): ``1 − cos(T(ĝ), g*)``
over all layers + 1e-4·TV + 1e-6·‖x̂‖₂/(H·W), with ``T`` the defense estimated from the observed
update (clipping bound, sparsity mask; noise is not re-added). After every stage each restart is
scored by its matching loss, and the stage and restart with the lowest loss are returned (the
official code returns the last restart — not copied). Every stage's best image is kept in
``AttackResult.stages`` so a report shows the search leave the generator's manifold. Example::

    res = GIFD(prior="out/prior/prior.safetensors", iterations=1200).run(obs, generator=torch.Generator())

Settings from the official code (github.com/ffhibnese/GIFD_Gradient_Inversion_Attack,
``configs_biggan.yml`` and ``invert_biggan``; read for these notes, not copied): 4 restarts; the same
number of Adam steps in every stage (1000 each) at learning rate 0.1 in every stage (``lr_io``, latent
and feature stages alike); l1 radii ``max_radius_gen_out`` = 2000, 2500, 3000, 3500, 4000, … for the
feature maps entering BigGAN-deep-128's blocks 1, 2, 3, … (2048×4×4, 2048×8×8, 2048×8×8, 1024×16×16,
1024×16×16 entries), over each sample's flattened map. Absolute radii do not transfer between
generators, so ``radius`` here is a mean deviation per entry: the official radius divided by the size
of the map it bounds (0.061, 0.019, 0.023, 0.013, 0.015 — both generators' maps are of unit scale:
BigGAN's batch-normalised, this project's pixel-normalised), and stage j's ball has radius
``r = radius[j] · numel(h_k)`` (the last value repeats for later stages); ``radius`` is a setting, so
an ablation can scale it. Deviation: the schedule is linear warm-up then cosine decay over each stage
(the official ramps up over 5 %, holds, then decays over the last 75 %).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import batch_size_of, denormalize, label_targets, protocol_assumptions, to_result
from ..matching import MatchingConfig, MatchResult
from ..steps import StepCallback, no_progress
from .search import (
    Renderer,
    condition_labels,
    get_prior,
    latent_problem,
    prior_problems,
    project_l1_ball,
    project_sphere,
    search,
)

# Official BigGAN radii for the maps entering blocks 1-5, over those maps' sizes: a radius per entry.
PAPER_RADIUS: tuple[float, ...] = tuple(
    r / n for r, n in zip((2000, 2500, 3000, 3500, 4000), (2048 * 16, 2048 * 64, 2048 * 64, 1024 * 256, 1024 * 256))
)


@dataclass(frozen=True, kw_only=True)
class GIFDConfig:
    """GIFD's settings (official code: R=4, Adam 0.1 in every stage, 1000 steps per stage). ``iterations``
    is the total budget per restart: ``latent_fraction`` of it for the latent stage (default: an equal
    share, as the official code), the rest split evenly over the feature stages ``layers`` (default:
    every feature map of the prior, coarse to fine). ``radius``: the l1 radius per feature entry of each
    feature stage (see the module's notes)."""

    prior: str | None = None
    iterations: int = 1500
    restarts: int = 4
    latent_fraction: float | None = None
    layers: tuple[int, ...] | None = None
    radius: tuple[float, ...] = PAPER_RADIUS
    lr: float = 0.1
    feature_lr: float = 0.1
    warmup_fraction: float = 0.05
    tv: float = 1e-4
    l2: float = 1e-6
    adaptive: bool = True
    condition: str = "auto"  # class input of a conditional prior: "auto" | "labels" | "random"
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.latent_fraction is not None and not 0 < self.latent_fraction <= 1:
            raise InputError(f"latent_fraction must be in (0, 1], got {self.latent_fraction}")
        if not self.radius or any(r < 0 for r in self.radius):
            raise InputError(f"radius needs non-negative values per feature entry, got {self.radius}")


@dataclass
class Stage:
    """One stage's outcome: which map it searched (None: the latent), every restart's variables,
    the l1 centre and radius (feature stages), and every restart's matching loss."""

    name: str
    layer: int | None
    variables: Tensor  # [R, B, ...]
    match: Tensor  # [R]
    x: Tensor  # [R, B, C, H, W] model inputs
    centre: Tensor | None = None
    radius: Tensor | None = None  # [R, B]


@attack("gifd")
class GIFD(Attack):
    """GIFD: GGL's latent search, then staged searches in the generator's intermediate feature domains kept
    inside l1 balls around the previous stage; the stage with the lowest matching loss is returned.

    Paper: Fang et al. ICCV 2023. Needs: a generative prior (``prior``) and labels (``labels=None``: ``auto``).
    Main settings (:class:`GIFDConfig`): ``iterations`` (all stages), ``restarts``, ``radius`` (l1 radius per
    feature entry, per stage), ``prior``."""

    paper = "Fang et al. ICCV 2023, arXiv:2308.04699 (generative prior: --prior)"
    Config = GIFDConfig

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
        targets, labels = label_targets(obs, labels, self.name)
        stages, estimate, curve = self.search_stages(
            obs, targets, batch_size_of(obs, labels, self.name), generator=generator, on_step=on_step
        )
        best_stage = min(range(len(stages)), key=lambda i: float(stages[i].match.min()))
        chosen = stages[best_stage]
        best = int(chosen.match.argmin())
        result = MatchResult(chosen.x[best], None, chosen.match.tolist(), best, curve, c.iterations)
        images = {s.name: denormalize(obs, s.x[int(s.match.argmin())]) for s in stages}
        G = get_prior(c.prior, self.name)
        assumptions = protocol_assumptions(obs) | {
            "prior": getattr(G, "meta", {}).get("training", {}).get("dataset"),
            "defense_estimate": estimate,
            "stage_match": {s.name: s.match.tolist() for s in stages},
            "chosen_stage": chosen.name,
        }
        return to_result(
            self.name,
            obs,
            result,
            t0,
            labels=labels.labels,
            restarts=c.restarts,
            config=self.config_json(),
            assumptions=assumptions,
            stages=images,
        )

    def search_stages(
        self,
        obs: Observation,
        targets: Tensor,
        B: int,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> tuple[list[Stage], dict, list[tuple[int, float]]]:
        """Run the latent stage and every feature stage; return each stage's outcome, the defense
        estimate and the loss curve."""
        c = self.config
        G = get_prior(c.prior, self.name)
        layers = list(range(G.num_features)) if c.layers is None else list(c.layers)
        if any(not 0 <= k < G.num_features for k in layers) or layers != sorted(set(layers)):
            raise InputError(f"layers must increase within 0..{G.num_features - 1}, got {layers}")
        share = 1 / (1 + len(layers)) if c.latent_fraction is None else c.latent_fraction
        n_latent = max(1, round(c.iterations * share)) if layers else c.iterations
        n_feat = (c.iterations - n_latent) // len(layers) if layers else 0
        if layers and n_feat < 1:
            raise InputError(f"{c.iterations} iterations leave none for the {len(layers)} feature stages")
        _, H, W = obs.input_shape
        base = MatchingConfig(
            iterations=n_latent,
            restarts=c.restarts,
            distance="cosine",
            lr=c.lr,
            signed=False,
            schedule="cosine",
            warmup=max(1, round(n_latent * c.warmup_fraction)),
            tv=c.tv,
            l2=c.l2 / (H * W),
            box=False,
            log_every=c.log_every,
        )
        problem, estimate = latent_problem(obs, targets, base, c.adaptive)
        to_input = Renderer(obs, G.config.channels)
        R, zd = c.restarts, G.config.z_dim
        Y = condition_labels(G, obs, targets, R, B, c.condition, generator)
        zr = math.sqrt(zd)
        total = n_latent + n_feat * len(layers)

        def render_z(z: Tensor, y: Tensor | None = None) -> Tensor:
            return to_input(G(z, y))

        Z0 = project_sphere(torch.randn(R, B, zd, generator=generator), zr)
        res = search(
            problem,
            render_z,
            Z0,
            cfg=base,
            extra=Y,
            project=lambda z: project_sphere(z, zr),
            on_step=on_step,
            stage="latent",
            total=total,
        )
        curve = list(res.curve)
        with torch.no_grad():
            flat_y = None if Y is None else Y.flatten()
            X = render_z(res.variables.flatten(0, 1), flat_y).unflatten(0, (R, B))
        stages = [Stage("latent", None, res.variables, res.match, X)]
        done = n_latent
        for j, k in enumerate(layers):
            with torch.no_grad():
                prev = stages[-1]
                if prev.layer is None:
                    centre = G.feature(k, prev.variables.flatten(0, 1), flat_y)
                else:
                    centre = prev.variables.flatten(0, 1)
                    for block in G.blocks[prev.layer : k]:
                        centre = block(centre)
                centre = centre.unflatten(0, (R, B))
            per_entry = c.radius[min(j, len(c.radius) - 1)]
            radius = torch.full((R, B), per_entry * centre[0, 0].numel())

            def project(h: Tensor, centre: Tensor = centre, radius: Tensor = radius) -> Tensor:
                d = project_l1_ball((h - centre).flatten(2).flatten(0, 1), radius.flatten())
                return centre + d.view_as(h)

            def render_h(h: Tensor, k: int = k) -> Tensor:
                return to_input(G.from_feature(k, h))

            cfg = replace(base, iterations=n_feat, lr=c.feature_lr, warmup=max(1, round(n_feat * c.warmup_fraction)))
            res = search(
                problem,
                render_h,
                centre,
                cfg=cfg,
                project=project,
                on_step=on_step,
                stage=f"h{k}",
                done=done,
                total=total,
            )
            done += n_feat
            curve += res.curve
            with torch.no_grad():
                X = render_h(res.variables.flatten(0, 1)).unflatten(0, (R, B))
            stages.append(Stage(f"h{k}", k, res.variables, res.match, X, centre, radius))
        return stages, estimate, curve
