"""What the generative-prior attacks share: loading the prior, mapping its output to the model's input,
the attacker's estimate of the client's defense, the l1-ball projection and a small search loop over
latents or feature maps that reuses the matching engine's objective and schedule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from ...errors import InputError, UnsupportedError
from ...observation import Observation
from ...prior import Generator, load_prior
from ..matching import MatchingConfig, MatchingProblem, lr_factor
from ..steps import Step, StepCallback

Update = dict[str, Tensor]

__all__ = [
    "Renderer",
    "SearchResult",
    "condition_labels",
    "defense_estimate",
    "get_prior",
    "latent_problem",
    "project_l1_ball",
    "project_sphere",
    "search",
]


# -- the prior ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _cached_prior(path: str, mtime: float) -> Generator:
    return load_prior(path)


def prior_problems(prior: object) -> list[str]:
    """The unmet need of a generative attack without a prior."""
    return (
        []
        if prior
        else [
            "it needs a generative prior: train one with `gradleak train-prior` and pass --prior OUT/prior.safetensors"
        ]
    )


def get_prior(prior: str | Generator | None, attack: str) -> Generator:
    """The generator given by path (cached while the file is unchanged) or as an object."""
    if isinstance(prior, Generator):
        return prior
    if not prior:
        raise UnsupportedError(
            attack,
            [
                "it needs a generative prior: train one with `gradleak train-prior` "
                "and pass --prior OUT/prior.safetensors"
            ],
        )
    p = Path(prior).expanduser()
    if not p.is_file():
        raise InputError(f"prior {prior!r} does not exist: train one with `gradleak train-prior`")
    return _cached_prior(str(p.resolve()), p.stat().st_mtime)


class Renderer:
    """Generator output [B, C', S, S] in [-1, 1] → normalised model input [B, C, H, W].

    ``x̂ = normalise(resize((G(·) + 1) / 2))`` as in GIFD; grey priors are repeated to RGB, RGB priors
    averaged to grey; resizing is bilinear (area when shrinking)."""

    def __init__(self, obs: Observation, prior_channels: int):
        c, self.h, self.w = obs.input_shape
        if prior_channels != c and 1 not in (prior_channels, c):
            raise InputError(f"a {prior_channels}-channel prior cannot produce {c}-channel inputs")
        self.c, self.pc = c, prior_channels
        norm = obs.normalization
        self.mean = torch.tensor(norm.mean).view(c, 1, 1) if norm is not None else None
        self.std = torch.tensor(norm.std).view(c, 1, 1) if norm is not None else None

    def to_unit(self, img: Tensor) -> Tensor:
        x = (img + 1) / 2
        if self.pc != self.c:
            x = x.expand(*x.shape[:-3], self.c, *x.shape[-2:]) if self.pc == 1 else x.mean(-3, keepdim=True)
        if tuple(x.shape[-2:]) != (self.h, self.w):
            mode = "area" if x.shape[-1] > self.w else "bilinear"
            kw = {} if mode == "area" else {"align_corners": False}
            x = F.interpolate(x, size=(self.h, self.w), mode=mode, **kw)
        return x

    def __call__(self, img: Tensor) -> Tensor:
        x = self.to_unit(img)
        return x if self.mean is None or self.std is None else (x - self.mean) / self.std


def condition_labels(
    G: Generator, obs: Observation, targets: Tensor, restarts: int, batch: int, mode: str, generator: torch.Generator
) -> Tensor | None:
    """The class inputs of a conditional prior, [R, B]: the recovered labels (``mode="labels"``, or
    ``"auto"`` when the prior and the task have the same number of classes), else drawn at random per
    restart (the out-of-distribution case, where the prior's classes are not the task's)."""
    n = G.config.num_classes
    if not n:
        return None
    use_labels = mode == "labels" or (mode == "auto" and n == obs.num_classes)
    if mode not in ("auto", "labels", "random"):
        raise InputError(f"condition must be 'auto', 'labels' or 'random', got {mode!r}")
    if use_labels:
        if n != obs.num_classes:
            raise InputError(f"the prior has {n} classes but the task {obs.num_classes}: use condition='random'")
        y = targets.argmax(-1) if targets.dtype.is_floating_point else targets
        return y.view(1, batch).expand(restarts, batch).clone()
    return torch.randint(n, (restarts, batch), generator=generator)


# -- the adaptive attacker's model of the defense -------------------------------------------------------
def defense_estimate(
    obs: Observation, *, min_zero_fraction: float = 0.5
) -> tuple[Callable[[Update], Update] | None, dict[str, Any]]:
    """Estimate the client's defense from the observed update alone, as GGL does, and return the
    transform to apply to a candidate update: the sparsity mask (entries that are exactly zero in
    tensors where at least ``min_zero_fraction`` are) and clipping at the observed global norm.
    Noise is not re-added. Returns ``(transform, description)``."""
    masks = {
        k: (v != 0).to(v.dtype)
        for k, v in obs.update.items()
        if v.numel() > 1 and float((v == 0).float().mean()) >= min_zero_fraction
    }
    bound = math.sqrt(sum(float(v.double().pow(2).sum()) for v in obs.update.values()))
    zero = sum(int((v == 0).sum()) for v in obs.update.values()) / max(1, sum(v.numel() for v in obs.update.values()))

    def transform(update: Update) -> Update:
        if masks:
            update = {k: v * masks[k] if k in masks else v for k, v in update.items()}
        norm = torch.sqrt(sum((v.pow(2).sum() for v in update.values()), torch.zeros(())))
        factor = torch.clamp(bound / (norm + 1e-12), max=1.0)
        return {k: v * factor for k, v in update.items()}

    return transform, {"clip_bound": bound, "masked_tensors": len(masks), "observed_zero_fraction": zero}


def latent_problem(
    obs: Observation, targets: Tensor, cfg: MatchingConfig, adaptive: bool
) -> tuple[MatchingProblem, dict[str, Any]]:
    """The matching problem of a generative attack, with the estimated defense applied to the candidate's
    update when ``adaptive``; also returns the estimate's description."""
    transform, estimate = defense_estimate(obs) if adaptive else (None, {})
    return MatchingProblem(obs, targets, cfg, transform=transform), estimate


# -- projections ----------------------------------------------------------------------------------------
def project_l1_ball(v: Tensor, radius: Tensor | float) -> Tensor:
    """Euclidean projection of each row of ``v`` [N, D] onto the l1 ball ``{w : ‖w‖₁ ≤ r}`` —
    exact, O(D log D) by sorting (Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008, Fig. 1).
    ``radius`` is a scalar or one value per row; rows already inside are returned unchanged."""
    if v.dim() != 2:
        raise InputError(f"project_l1_ball expects [N, D], got {tuple(v.shape)}")
    r = torch.as_tensor(radius, dtype=v.dtype).expand(v.shape[0]).unsqueeze(1)
    u = v.abs()
    mu = u.sort(dim=1, descending=True).values
    cs = mu.cumsum(1)
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = ((mu * k) > (cs - r)).sum(1, keepdim=True).clamp_min(1)  # the condition holds on a prefix
    theta = ((cs.gather(1, rho - 1) - r) / rho).clamp_min(0)
    w = torch.sign(v) * (u - theta).clamp_min(0)
    inside = u.sum(1, keepdim=True) <= r
    return torch.where(inside, v, torch.where(r > 0, w, torch.zeros_like(v)))


def project_sphere(z: Tensor, radius: float) -> Tensor:
    """Each latent (last dimension) rescaled to norm ``radius``."""
    return z * (radius / z.norm(dim=-1, keepdim=True).clamp_min(1e-12))


# -- the search loop ------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """The searched variables of every restart, each restart's final matching distance and the curve."""

    variables: Tensor  # [R, B, ...]
    match: Tensor  # [R]
    curve: list[tuple[int, float]]


def search(
    problem: MatchingProblem,
    render: Callable[..., Tensor],
    V: Tensor,
    *,
    cfg: MatchingConfig,
    extra: Tensor | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    on_step: StepCallback,
    stage: str = "",
    done: int = 0,
    total: int | None = None,
) -> SearchResult:
    """Adam on the variables ``V`` [R, ...] (latents or feature maps) of ``R`` restarts, minimising
    ``problem.objective(render(v[, e]))`` with ``cfg``'s learning rate and schedule, ``project``-ing
    after every step; ``extra`` [R, ...] is a fixed per-restart input to ``render`` (class labels).
    Progress is reported as iterations ``done + it`` of ``total``."""
    total = total or cfg.iterations

    def objective(v: Tensor, e: Tensor | None) -> tuple[Tensor, Tensor]:
        return problem.objective(render(v) if e is None else render(v, e))

    in_dims = (0, None) if extra is None else (0, 0)
    step_fn = vmap(grad_and_value(objective, has_aux=True), in_dims=in_dims)
    V = V.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([V], lr=cfg.lr)
    curve: list[tuple[int, float]] = []
    for it in range(cfg.iterations):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, it)
        g, (loss, _) = step_fn(V.detach(), extra)
        V.grad = g.sign() if cfg.signed else g
        opt.step()
        if project is not None:
            with torch.no_grad():
                V.data = project(V.data)
        if it % cfg.log_every == 0 or it + 1 == cfg.iterations:
            best = float(loss.nan_to_num(float("inf")).min())
            curve.append((done + it, best))
            on_step(Step(done + it + 1, total, best, stage))
    return SearchResult(V.detach(), final_match(problem, render, V.detach(), extra), curve)


def final_match(problem: MatchingProblem, render: Callable[..., Tensor], V: Tensor, extra: Tensor | None) -> Tensor:
    """The matching distance (after the defense estimate) of each restart's candidate, [R]."""
    with torch.no_grad():
        if extra is None:
            return vmap(lambda v: problem.objective(render(v))[1])(V).nan_to_num(float("inf"))
        return vmap(lambda v, e: problem.objective(render(v, e))[1])(V, extra).nan_to_num(float("inf"))
