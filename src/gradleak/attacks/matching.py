"""The gradient-matching engine shared by every optimisation attack (DLG, Inverting Gradients,
GradInversion, generative priors).

It replays the client (:mod:`gradleak.protocols`) on a candidate batch as a pure ``torch.func``
function, compares the candidate update with the observed one (L2 or cosine over all layers, with
optional per-layer weights), adds image priors (TV, L2, BatchNorm statistics) and optimises the
candidate with Adam (optionally on signed gradients, step/cosine schedules, warm-up) or L-BFGS,
inside the image box. The "plateau" schedule (gradleak's addition) moves the step schedule's first decay to
where the best candidate's loss stops falling. Restarts run *batched*: the candidates of all restarts go through one
``vmap``-ed call, and the best restart is chosen by its gradient-matching loss, never by ground truth.
Long runs report progress through a callback and can checkpoint and resume.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..errors import CheckpointError, GradleakError, InputError
from ..observation import Observation
from ..protocols import REPLAYS, autograd_grad, replay_protocol
from ..schema import Problems, finite_problems, is_int, is_number, read_safetensors, shape_problems
from .steps import Step, StepCallback, no_progress

ExtraTerm = Callable[[Tensor], Tensor]
TV_SCALES = ("absolute", "relative")
SCHEDULES = ("step", "cosine", "constant", "plateau")


@dataclass(frozen=True, kw_only=True)
class MatchingConfig:
    """Settings of one matching run; each attack fills in its paper's defaults."""

    iterations: int = 1000
    restarts: int = 1
    distance: str = "cosine"  # "cosine" (all layers concatenated) | "l2" (squared) |
    # "layer_l2": Σ_l w_l ‖·‖₂ per layer (Yin et al. 2021)
    layer_weights: dict[str, float] | None = None
    optimizer: str = "adam"  # "adam" | "lbfgs"
    lr: float = 0.1
    signed: bool = True  # Adam on the sign of the gradient (Geiping et al. 2020)
    # "step": ×0.1 at 3/8, 5/8, 7/8 | "cosine" | "constant" | "plateau" (gradleak's addition, issue 19; see Plateau):
    # the first ×0.1 once the loss has stopped falling, at the latest at 3/8, the others at 2/5 and 4/5 of the rest
    schedule: str = "step"
    patience: int = 20  # "plateau": iterations without a 1% fall of the loss before the first decay (see Plateau)
    warmup: int = 0
    tv: float = 0.0
    # "absolute": the loss adds ``tv · TV(x)`` | "relative" (gradleak's addition, issue 19): each step adds TV's
    # gradient scaled to ``tv`` times the norm of the rest of the loss's gradient, per candidate (Adam only)
    tv_scale: str = "absolute"
    l2: float = 0.0
    bn: float = 0.0
    box: bool = True  # keep candidates inside the normalised image range
    optimize_labels: bool = False  # DLG: match soft labels jointly (softmax of free logits)
    replay: str = "known-order"  # FedAvg: "known-order" (the client's mini-batch order) | "full-batch"
    lbfgs_max_iter: int = 20
    log_every: int = 10
    checkpoint_every: int = 100
    # early elimination (successive halving): at each of these fractions of the run, keep the better half of the
    # candidates still optimised, by matching distance
    prune_at: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.restarts < 1 or self.patience < 1:
            raise InputError(
                f"iterations, restarts and patience must be >= 1, got {self.iterations}, {self.restarts}, "
                f"{self.patience}"
            )
        if self.prune_at:
            p = tuple(self.prune_at)
            if not (all(0 < f < 1 for f in p) and all(a < b for a, b in zip(p, p[1:]))):
                raise InputError(f"prune_at must be increasing fractions of the run in (0, 1), got {list(p)}")
            if self.restarts < 2 or self.optimizer != "adam" or self.optimize_labels:
                raise InputError("early elimination (prune_at) needs restarts >= 2, Adam and fixed labels")
        for name, allowed in (
            ("distance", ("cosine", "l2", "layer_l2")),
            ("optimizer", ("adam", "lbfgs")),
            ("schedule", SCHEDULES),
            ("tv_scale", TV_SCALES),
            ("replay", REPLAYS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tv_scale == "relative" and self.optimizer != "adam":
            raise InputError(
                "a relative TV weight (tv_scale='relative') needs Adam: L-BFGS's line search needs one loss"
            )


@dataclass
class MatchResult:
    """The best candidate (model space), every restart's final matching loss and the loss curve."""

    x: Tensor  # [B, C, H, W], normalised model input of the best restart
    label_logits: Tensor | None  # [B, N] if labels were optimised
    restart_losses: list[float]
    best_restart: int
    curve: list[tuple[int, float]]  # (iteration, best total loss over restarts)
    iterations: int
    all_x: Tensor | None = None  # [R, B, C, H, W]
    resumed: dict[str, int] | None = None  # from a checkpoint: {"from_iteration", "checkpoint_iterations"}


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV: mean absolute difference of horizontal and vertical neighbours."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def lr_factor(cfg: MatchingConfig, it: int, first_decay: int | None = None) -> float:
    """The learning-rate multiplier at iteration ``it``; ``first_decay``: where the "plateau" schedule found the
    loss flat (:class:`Plateau`; ``None``: not yet, and then "plateau" is the step schedule)."""
    n = cfg.iterations
    warm = min(1.0, (it + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.schedule in ("step", "plateau"):
        d = first_decay
        if cfg.schedule == "step" or d is None or d >= 3 * n // 8:
            milestones = (3 * n // 8, 5 * n // 8, 7 * n // 8)
        else:  # where the step schedule's later decays (5/8, 7/8) are in what follows its first (3/8): 2/5 and 4/5
            milestones = (d, d + 2 * (n - d) // 5, d + 4 * (n - d) // 5)
        return warm * 0.1 ** sum(it >= m for m in milestones)
    if cfg.schedule == "cosine":
        t = max(0, it - cfg.warmup) / max(1, n - cfg.warmup)
        return warm * 0.5 * (1 + math.cos(math.pi * t))
    return warm


@dataclass
class Plateau:
    """Where the "plateau" schedule decays first (gradleak's addition, issue 19): after ``patience`` iterations in
    which the best candidate's loss has not fallen by ``rel`` of its lowest value so far.

    Why: at Adam step 1.0 (``ig_relative_tv``) the loss stops falling after a few dozen iterations, whatever the
    budget, and the step schedule would hold that step until 3/8 of the run. Measured in benchmarks/core and
    benchmarks/performance. ``patience`` comes from ``MatchingConfig.patience`` (20 by default)."""

    patience: int
    rel: float = 0.01
    best: float = math.inf
    since: int = 0
    first_decay: int | None = None

    def update(self, it: int, loss: float) -> None:
        """Record iteration ``it``'s loss (before its step); once flat, decay from iteration ``it + 1`` on."""
        if self.first_decay is not None:
            return
        if math.isinf(self.best) or loss < self.best - self.rel * abs(self.best):
            self.best, self.since = loss, 0
            return
        self.since += 1
        if self.since >= self.patience:
            self.first_decay = it + 1


def candidate_phases(cfg: MatchingConfig) -> list[tuple[int, int]]:
    """(iterations, candidates optimised together) of each phase of a run: one phase without early elimination;
    with ``prune_at``, the better half (rounded up) of the candidates goes on at each pruning point."""
    phases, start, n = [], 0, cfg.restarts
    for f in cfg.prune_at:
        at = max(start, min(cfg.iterations, round(f * cfg.iterations)))
        if at > start:
            phases.append((at - start, n))
        start, n = at, (n + 1) // 2
    phases.append((cfg.iterations - start, n))
    return [(steps, n) for steps, n in phases if steps > 0]


def client_sizes(obs: Observation) -> tuple[int, ...] | None:
    """The per-client batch sizes of an aggregate (``None`` for one client's update): the assumed sizes, or an
    equal split of the batch."""
    if obs.clients == 1:
        return None
    if obs.client_batch_sizes is not None:
        return obs.client_batch_sizes
    b = obs.known_batch_size()
    if b % obs.clients:
        raise InputError(
            f"an aggregate of {obs.clients} clients with {b} samples in all: give the client batch sizes "
            "(they do not split equally)"
        )
    return (b // obs.clients,) * obs.clients


def aggregated(update_fn: Callable, sizes: tuple[int, ...] | None) -> Callable:
    """``update_fn`` for secure aggregation: each client's part of the candidate batch replayed on its own
    (its BatchNorm statistics, its FedAvg steps), then the mean of the clients' updates — what the server saw."""
    if sizes is None:
        return update_fn

    def mean_update(params: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        parts = [update_fn(params, xc, yc) for xc, yc in zip(x.split(list(sizes)), y.split(list(sizes)))]
        return {k: torch.stack([u[k] for u in parts]).mean(0) for k in parts[0]}

    return mean_update


class MatchingProblem:
    """The objective ``distance(update(x̂, ŷ), update*) + priors`` for one candidate batch.

    Args:
        obs: the observation (model, update, protocol).
        targets: the labels used for the candidate: int64 [B] or soft [B, N]; ``None`` when
            ``cfg.optimize_labels``.
        cfg: the matching settings.
        extra_terms: further ``x -> scalar`` terms added to the objective (e.g. an attack's own prior).
        transform: applied to the candidate update before the distance — an adaptive attacker's
            model of the client's defense (e.g. the observed sparsity mask, the clipping bound).
        bn_targets: per-BatchNorm-layer (mean, var) targets of the BN term, in module order,
            replacing the model's running statistics (e.g. the client batch's exact statistics).
    """

    def __init__(
        self,
        obs: Observation,
        targets: Tensor | None,
        cfg: MatchingConfig,
        extra_terms: Sequence[ExtraTerm] = (),
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        bn_targets: Sequence[tuple[Tensor, Tensor]] | None = None,
    ):
        targets = None if targets is None else targets.to(obs.device)
        self.obs, self.cfg, self.targets, self.transform = obs, cfg, targets, transform
        if targets is None and not cfg.optimize_labels:
            raise InputError("labels are needed unless the attack optimises them (optimize_labels)")
        self.net, self.params = obs.functional()
        self.buffers = dict(self.net.named_buffers())
        protocol = replay_protocol(obs.protocol, cfg.replay)
        sizes = client_sizes(obs)
        self.update_fn = aggregated(protocol.update_fn(self.net), sizes)
        # one candidate: the same update through plain autograd (faster than nested torch.func)
        self._autograd_update = aggregated(protocol.update_fn(self.net, autograd_grad), sizes)
        self._leaves = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        self.keys = [k for k in self.params if k in obs.update]
        weights = cfg.layer_weights or {}
        self.weights = [float(weights.get(k, 1.0)) for k in self.keys]
        self.target = [obs.update[k].detach() for k in self.keys]
        self.target_sq = sum(w * float(t.pow(2).sum()) for w, t in zip(self.weights, self.target))
        if cfg.distance == "cosine" and self.target_sq == 0:
            raise InputError("the observed update is all zeros: cosine matching is undefined")
        self.extra_terms = list(extra_terms)
        if bn_targets is not None:
            self._bn_targets = [(m.detach().float(), v.detach().float()) for m, v in bn_targets]
        else:
            self._bn_targets = self._bn_statistics() if cfg.bn else []
        self._captured: list[tuple[Tensor, Tensor]] | None = None
        if cfg.bn:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.register_forward_pre_hook(self._capture_hook)
        norm = obs.normalization
        c = obs.input_shape[0]
        if norm is not None:
            lo, hi = norm.bounds()
        else:
            lo, hi = torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
        self.lower, self.upper = lo.to(obs.device, obs.dtype), hi.to(obs.device, obs.dtype)

    # -- pieces of the objective ------------------------------------------------------------------
    def _bn_statistics(self) -> list[tuple[Tensor, Tensor]]:
        stats = [
            (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for m in self.obs.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None
            and m.running_var is not None
        ]
        if not stats:
            raise InputError("the BatchNorm term needs BatchNorm layers with running statistics")
        return stats

    def _capture_hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._captured is not None:
            h = inputs[0]
            dims = [0] + list(range(2, h.dim()))
            self._captured.append((h.mean(dims), h.var(dims, unbiased=False)))

    def bn_loss(self, x: Tensor) -> Tensor:
        """Σ_l ‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂ (Yin et al. 2021, eq. 6)."""
        self._captured = []
        try:
            functional_call(self.net, (self.params, self.buffers), (x,))
            captured = self._captured
        finally:
            self._captured = None
        return sum(
            torch.linalg.vector_norm(m - tm) + torch.linalg.vector_norm(v - tv)
            for (m, v), (tm, tv) in zip(captured, self._bn_targets)
        )

    def distance(self, update: dict[str, Tensor]) -> Tensor:
        cand = [update[k] for k in self.keys]
        if self.cfg.distance == "l2":
            return sum(
                (w * (c - t).pow(2).sum() for w, c, t in zip(self.weights, cand, self.target)), cand[0].new_zeros(())
            )
        if self.cfg.distance == "layer_l2":
            return sum(w * torch.linalg.vector_norm(c - t) for w, c, t in zip(self.weights, cand, self.target))
        dot = sum(w * (c * t).sum() for w, c, t in zip(self.weights, cand, self.target))
        sq = sum((w * c.pow(2).sum() for w, c in zip(self.weights, cand)), cand[0].new_zeros(()))
        return 1 - dot / (sq.sqrt() * math.sqrt(self.target_sq) + 1e-12)

    def labels_from(self, label_logits: Tensor | None) -> Tensor:
        return F.softmax(label_logits, -1) if label_logits is not None else self.targets  # type: ignore[return-value]

    def objective(
        self, x: Tensor, label_logits: Tensor | None = None, *, autograd: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(total loss, matching distance) for one candidate batch ``x`` [B, C, H, W]; ``autograd``:
        the client's update through plain autograd (for a caller differentiating with autograd)
        instead of ``torch.func`` (for ``grad``/``vmap`` callers)."""
        if autograd:
            update = self._autograd_update(self._leaves, x, self.labels_from(label_logits))
        else:
            update = self.update_fn(self.params, x, self.labels_from(label_logits))
        match = self.distance(self.transform(update) if self.transform else update)
        loss = match
        if self.cfg.tv and self.cfg.tv_scale == "absolute":
            loss = loss + self.cfg.tv * total_variation(x)
        if self.cfg.l2:
            loss = loss + self.cfg.l2 * torch.linalg.vector_norm(x)
        if self.cfg.bn:
            loss = loss + self.cfg.bn * self.bn_loss(x)
        for term in self.extra_terms:
            loss = loss + term(x)
        return loss, match.detach()

    def fingerprint(self) -> str:
        """A digest of what this problem matches (update, labels), to tie checkpoints to their run."""
        import hashlib

        h = hashlib.sha256()
        for t in self.target + ([self.targets] if self.targets is not None else []):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def clamp_(self, x: Tensor) -> None:
        if self.cfg.box:
            x.data = torch.maximum(torch.minimum(x.data, self.upper), self.lower)


def objective_fn(problem: MatchingProblem) -> Callable:
    """``(X[R], Y[R] | None) -> (grads, (loss[R], match[R]))``: vmapped over restarts, or, for a single
    restart, plain autograd (``vmap`` and nested ``torch.func`` add overhead there and buy nothing)."""
    joint = problem.cfg.optimize_labels
    objective: Callable[..., tuple[Tensor, Tensor]] = problem.objective if joint else (lambda x: problem.objective(x))
    single = grad_and_value(objective, argnums=(0, 1) if joint else 0, has_aux=True)
    batched = vmap(single)

    def step(X: Tensor, Y: Tensor | None) -> tuple:
        if X.shape[0] == 1:
            inputs = [X[0].detach().requires_grad_()] + ([Y[0].detach().requires_grad_()] if joint else [])  # type: ignore[index]
            with torch.enable_grad():
                loss, match = problem.objective(*inputs, autograd=True)
                g = torch.autograd.grad(loss, inputs)
            grads, aux = tuple(t.unsqueeze(0) for t in g), (loss.detach().unsqueeze(0), match.unsqueeze(0))
        else:
            g, aux = batched(*((X, Y) if joint else (X,)))
            grads = g if joint else (g,)
        if problem.cfg.tv and problem.cfg.tv_scale == "relative":
            gx, loss = add_relative_tv(X, grads[0], aux[0], problem.cfg.tv)
            grads, aux = (gx, *grads[1:]), (loss, aux[1])
        return grads, aux

    return step


def add_relative_tv(X: Tensor, grad: Tensor, loss: Tensor, weight: float) -> tuple[Tensor, Tensor]:
    """``grad`` [R, B, C, H, W] plus, per candidate r, TV's gradient scaled to ``weight · ‖grad_r‖``; ``loss`` [R]
    plus TV at that scale. The weight stays a share of the step however small the matching gradient is; a fixed
    weight overrides it where the matching gradient is small (issue 19: about 1e-6 per pixel against TV's 7e-4 on
    the untrained ConvNet)."""
    with torch.enable_grad():
        x = X.detach().requires_grad_()
        tv = torch.stack([total_variation(c) for c in x])
        (g_tv,) = torch.autograd.grad(tv.sum(), x)
    dims = tuple(range(1, X.ndim))
    scale = (
        weight * torch.linalg.vector_norm(grad, dim=dims) / torch.linalg.vector_norm(g_tv, dim=dims).clamp_min(1e-30)
    )
    shape = (-1,) + (1,) * (X.ndim - 1)
    return grad + scale.view(shape) * g_tv, loss + scale * tv.detach()


def run_matching(
    problem: MatchingProblem,
    *,
    batch_size: int,
    generator: torch.Generator,
    on_step: StepCallback = no_progress,
    checkpoint: str | Path | None = None,
    init: Tensor | None = None,
    stage: str = "",
    post_step: Callable[[int, Tensor], None] | None = None,
) -> MatchResult:
    """Optimise ``cfg.restarts`` candidate batches of ``batch_size`` images; return the best.

    ``checkpoint``: a file to save the run to every ``cfg.checkpoint_every`` iterations and to resume it from
    (Adam only). A checkpoint of the same problem and settings resumes at its iteration, also under a larger
    ``cfg.iterations`` (extending a finished run): the learning-rate schedule of the remaining iterations then
    follows the new budget, so an extended run is not the run it would have been with that budget from the
    start; ``MatchResult.resumed`` records where it resumed and the checkpoint's budget. A corrupt checkpoint,
    one of another problem or settings, or one beyond ``cfg.iterations`` raises :class:`CheckpointError`.

    ``init`` ([B, C, H, W] or [R, B, C, H, W]) replaces the random start; ``post_step(it, X)`` runs
    after every Adam step on the candidates ``X`` [R, B, C, H, W] (it may change them in place, e.g.
    Langevin noise, or refresh an attack's state such as a group consensus)."""
    cfg = problem.cfg
    shape = (cfg.restarts, batch_size, *problem.obs.input_shape)
    device, dtype = problem.obs.device, problem.obs.dtype  # candidates live with the model; draws stay seeded on CPU
    X = (init.expand(shape).clone() if init is not None else torch.randn(shape, generator=generator)).to(device, dtype)
    problem.clamp_(X)
    Y = (
        torch.randn(cfg.restarts, batch_size, problem.obs.num_classes, generator=generator).to(device, dtype)
        if cfg.optimize_labels
        else None
    )
    if cfg.optimizer == "lbfgs":
        return _run_lbfgs(problem, X, Y, on_step, stage)
    X.requires_grad_(True)
    variables = [X] + ([Y.requires_grad_(True)] if Y is not None else [])
    opt: torch.optim.Optimizer = torch.optim.Adam(variables, lr=cfg.lr)
    ckpt = _Checkpoint(Path(checkpoint), cfg, problem.fingerprint()) if checkpoint else None
    state = ckpt.restore(variables, opt) if ckpt else _Resumed.start(cfg.restarts, cfg.patience)
    start, curve, alive, retired, plateau = state.iteration, state.curve, state.alive, state.retired, state.plateau
    X = variables[0]
    resumed = None if state.budget is None else {"from_iteration": start, "checkpoint_iterations": state.budget}
    prune_points = set(itertools.accumulate(steps for steps, _ in candidate_phases(cfg)[:-1]))
    step_fn = objective_fn(problem)
    for it in range(start, cfg.iterations):
        if it in prune_points and len(alive) > 1:
            X, opt, alive = _prune(problem, X, opt, alive, retired)
            variables = [X]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, it, plateau.first_decay)
        grads, (loss, _) = step_fn(X.detach(), None if Y is None else Y.detach())
        last = it + 1 == cfg.iterations
        logged = it % cfg.log_every == 0 or last
        watching = cfg.schedule == "plateau" and plateau.first_decay is None
        best = float(loss.nan_to_num(float("inf")).min()) if logged or watching else math.inf
        if watching:
            plateau.update(it, best)
        for v, g in zip(variables, grads):
            v.grad = g.sign() if cfg.signed else g
        opt.step()
        if post_step is not None:
            post_step(it, X.data)
        problem.clamp_(X)
        if logged:
            curve.append((it, best))
            on_step(Step(it + 1, cfg.iterations, best, stage))
        if ckpt and ((it + 1) % cfg.checkpoint_every == 0 or last):
            ckpt.save(variables, opt, it + 1, curve, alive, retired, plateau)
    # score the final candidates by matching loss alone (never by ground truth)
    final = matching_distances(problem, X.detach(), None if Y is None else Y.detach())
    best = alive[int(final.nan_to_num(float("inf")).argmin())]
    losses = dict(zip(alive, final.tolist())) | {i: loss for i, (_, loss) in retired.items()}
    candidates = dict(zip(alive, X.detach())) | {i: x for i, (x, _) in retired.items()}
    return MatchResult(
        candidates[best].clone(),
        None if Y is None else Y.detach()[alive.index(best)].clone(),
        [losses[i] for i in range(cfg.restarts)],
        best,
        curve,
        cfg.iterations,
        torch.stack([candidates[i] for i in range(cfg.restarts)]).clone(),
        resumed,
    )


def _prune(
    problem: MatchingProblem,
    X: Tensor,
    opt: torch.optim.Optimizer,
    alive: list[int],
    retired: dict[int, tuple[Tensor, float]],
) -> tuple[Tensor, torch.optim.Optimizer, list[int]]:
    """Early elimination: keep the better half (rounded up) of the candidates ``X`` by matching distance, with their
    Adam state; the others go to ``retired`` (restart index → (candidate, distance))."""
    dist = matching_distances(problem, X.detach()).nan_to_num(float("inf"))
    keep = sorted(dist.argsort()[: (len(alive) + 1) // 2].tolist())
    for j in set(range(len(alive))) - set(keep):
        retired[alive[j]] = (X.detach()[j].clone(), float(dist[j]))
    old = opt.state[X]
    kept = X.detach()[keep].clone().requires_grad_(True)
    new = torch.optim.Adam([kept], lr=opt.param_groups[0]["lr"])
    new.state[kept] = {
        "step": old["step"].clone(),
        "exp_avg": old["exp_avg"][keep],
        "exp_avg_sq": old["exp_avg_sq"][keep],
    }
    return kept, new, [alive[j] for j in keep]


def matching_distances(problem: MatchingProblem, X: Tensor, Y: Tensor | None = None) -> Tensor:
    """The gradient-matching distance (no priors) of each candidate batch in ``X`` [R, B, C, H, W]."""
    with torch.no_grad():
        if Y is None:
            return vmap(lambda x: problem.objective(x)[1])(X)
        return vmap(lambda x, y: problem.objective(x, y)[1])(X, Y)


def _run_lbfgs(problem: MatchingProblem, X: Tensor, Y: Tensor | None, on_step: StepCallback, stage: str) -> MatchResult:
    """L-BFGS per restart (its line search couples variables, so restarts run one after another)."""
    cfg = problem.cfg
    step = objective_fn(problem)
    curve: list[tuple[int, float]] = []
    used = 0
    for r in range(cfg.restarts):
        x = X[r].clone().requires_grad_(True)
        y = Y[r].clone().requires_grad_(True) if Y is not None else None
        variables = [x] + ([y] if y is not None else [])
        opt = torch.optim.LBFGS(variables, lr=cfg.lr, max_iter=cfg.lbfgs_max_iter, history_size=100)

        def closure() -> Tensor:
            grads, (loss, _) = step(x.detach()[None], None if y is None else y.detach()[None])
            for v, gv in zip(variables, grads):
                v.grad = gv[0]
            return loss[0]

        previous, stalled = float("inf"), 0
        for it in range(cfg.iterations):
            loss = opt.step(closure)
            problem.clamp_(x)
            value = float(loss)
            if not math.isfinite(value):
                break
            # L-BFGS has converged when its loss stops moving: stop instead of re-evaluating it
            stalled = stalled + 1 if abs(previous - value) <= 1e-9 * max(1.0, abs(value)) else 0
            previous = value
            done = stalled >= 3 or it + 1 == cfg.iterations
            if it % cfg.log_every == 0 or done:
                curve.append((r * cfg.iterations + it, value))
                n = (r + 1) * cfg.iterations if done else r * cfg.iterations + it + 1  # a converged restart is complete
                on_step(Step(n, cfg.restarts * cfg.iterations, value, stage))
            if done:
                break
        used = max(used, it + 1)
        X[r] = x.detach()
        if Y is not None:
            Y[r] = y.detach()  # type: ignore[union-attr]
    final = matching_distances(problem, X, Y)
    best = int(final.nan_to_num(float("inf")).argmin())
    return MatchResult(
        X[best].clone(), None if Y is None else Y[best].clone(), final.tolist(), best, curve, used, X.clone()
    )


def check_checkpoint_file(path: str | Path) -> None:
    """Raise :class:`CheckpointError` when ``path`` exists but is no readable gradleak checkpoint (whether it
    fits a run is known only when the run starts); a missing file is fine: the run starts afresh."""
    if Path(path).exists():
        try:
            read_safetensors(path, "gradleak-checkpoint", "checkpoint")
        except GradleakError as e:
            raise CheckpointError(str(e)) from None


@dataclass
class _Resumed:
    """Where a run (re)starts: iteration, loss curve so far, the checkpoint's iteration budget (``None``: no
    checkpoint), the restarts still optimised and those eliminated (index → (candidate, matching distance)), and
    the "plateau" schedule's state."""

    iteration: int
    curve: list[tuple[int, float]]
    budget: int | None
    alive: list[int]
    retired: dict[int, tuple[Tensor, float]]
    plateau: Plateau

    @classmethod
    def start(cls, restarts: int, patience: int) -> _Resumed:
        """A run from its first iteration: every restart optimised, the schedule not yet decayed."""
        return cls(0, [], None, list(range(restarts)), {}, Plateau(patience))


class _Checkpoint:
    """A resumable snapshot of a run: candidates (those still optimised and those eliminated), Adam state,
    iteration, curve and the run's iteration budget (safetensors + JSON).

    Restoring checks the whole file first: a corrupt file, one of another run (other settings, except the
    iteration budget, or another observation) or one whose tensors do not fit this run raises one
    CheckpointError, and nothing is resumed."""

    def __init__(self, path: Path, cfg: MatchingConfig, fingerprint: str):
        self.path = path
        self.iterations, self.patience = cfg.iterations, cfg.patience
        settings = {k: v for k, v in asdict(cfg).items() if k != "iterations"}  # a run may be extended
        self.key = json.dumps({"config": settings, "observation": fingerprint}, sort_keys=True, default=str)

    def save(
        self,
        variables: list[Tensor],
        opt: torch.optim.Optimizer,
        iteration: int,
        curve: list[tuple[int, float]],
        alive: list[int],
        retired: dict[int, tuple[Tensor, float]],
        plateau: Plateau,
    ) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {f"retired{i}": x.contiguous() for i, (x, _) in retired.items()}
        for i, v in enumerate(variables):
            tensors[f"var{i}"] = v.detach().contiguous()
            st = opt.state.get(v, {})
            for name in ("exp_avg", "exp_avg_sq"):
                if name in st:
                    tensors[f"var{i}.{name}"] = st[name].contiguous()
        meta = {
            "config": self.key,
            "iteration": iteration,
            "iterations": self.iterations,
            "curve": [[it, b if math.isfinite(b) else None] for it, b in curve],
            "steps": [float(opt.state.get(v, {}).get("step", 0)) for v in variables],
            "alive": alive,
            "retired": {str(i): loss for i, (_, loss) in retired.items()},
            "plateau": [plateau.best if math.isfinite(plateau.best) else None, plateau.since, plateau.first_decay],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={"gradleak-checkpoint": json.dumps(meta)})
        tmp.replace(self.path)

    def restore(self, variables: list[Tensor], opt: torch.optim.Optimizer) -> _Resumed:
        """Where to resume; without a checkpoint yet, the start. Restored candidates replace ``variables``' data
        (fewer rows once candidates were eliminated)."""
        if not self.path.exists():
            return _Resumed.start(variables[0].shape[0], self.patience)
        try:
            return self._restore(variables, opt)
        except GradleakError as e:
            raise CheckpointError(str(e)) from None

    def _restore(self, variables: list[Tensor], opt: torch.optim.Optimizer) -> _Resumed:
        f = read_safetensors(self.path, "gradleak-checkpoint", "checkpoint")
        meta = f.header
        if meta.get("config") != self.key:
            raise InputError(
                f"checkpoint {self.path} belongs to another run (other settings or another "
                "observation); remove it or use another path"
            )
        p = Problems()
        budget = p.integer(meta, "iterations", 1, 2**62)
        iteration = p.integer(meta, "iteration", 0, budget or self.iterations)
        if iteration is not None and iteration > self.iterations:
            p.append(f"iteration: the checkpoint is at iteration {iteration}, beyond this run's {self.iterations}")
        curve = p.get(meta, "curve", "")
        if not (
            isinstance(curve, list)
            and len(curve) <= (budget or 0) + 1
            and all(
                isinstance(c, list) and len(c) == 2 and is_int(c[0]) and (c[1] is None or is_number(c[1]))
                for c in curve
            )
        ):
            p.append("curve: expected a list of [iteration, loss or null] pairs")
        steps = p.get(meta, "steps", "")
        if not (
            isinstance(steps, list) and len(steps) == len(variables) and all(is_number(x) and x >= 0 for x in steps)
        ):
            p.append(f"steps: expected {len(variables)} non-negative numbers")
        restarts = variables[0].shape[0]
        alive = meta.get("alive", list(range(restarts)))
        retired = meta.get("retired", {})
        if not (
            isinstance(alive, list)
            and isinstance(retired, dict)
            and all(is_int(i) for i in alive)
            and all(is_number(v) for v in retired.values())
            and sorted(alive + [int(k) for k in retired if k.isdigit()]) == list(range(restarts))
        ):
            p.append(f"alive, retired: expected a split of the {restarts} restarts")
            alive, retired = list(range(restarts)), {}
        plateau = meta.get("plateau", [None, 0, None])
        if not (
            isinstance(plateau, list)
            and len(plateau) == 3
            and (plateau[0] is None or is_number(plateau[0]))
            and is_int(plateau[1])
            and plateau[1] >= 0
            and (plateau[2] is None or (is_int(plateau[2]) and plateau[2] >= 0))
        ):
            p.append("plateau: expected [lowest loss or null, iterations since, first decay or null]")
            plateau = [None, 0, None]
        rows = (len(alive),)
        want = {f"var{i}": rows + tuple(v.shape[1:]) for i, v in enumerate(variables)}
        want |= {
            f"var{i}.{n}": rows + tuple(v.shape[1:])
            for i, v in enumerate(variables)
            for n in ("exp_avg", "exp_avg_sq")
            if f"var{i}.exp_avg" in f.shapes
        }
        want |= {f"retired{k}": tuple(variables[0].shape[1:]) for k in retired}
        p += shape_problems(f.shapes, want)
        p.raise_if_any(f"checkpoint {self.path} cannot resume this run")
        tensors = f.tensors()
        p += finite_problems(tensors)
        p.raise_if_any(f"checkpoint {self.path} cannot resume this run")
        for i, v in enumerate(variables):
            v.data = tensors[f"var{i}"].to(v.dtype).clone()
            if f"var{i}.exp_avg" in tensors:
                opt.state[v] = {
                    "step": torch.tensor(float(steps[i])),
                    "exp_avg": tensors[f"var{i}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"var{i}.exp_avg_sq"].clone(),
                }
        assert iteration is not None and budget is not None  # no problems: the header was read
        return _Resumed(
            iteration,
            [(it, math.inf if b is None else b) for it, b in curve],
            budget,
            [int(i) for i in alive],
            {int(k): (tensors[f"retired{k}"].clone(), float(v)) for k, v in retired.items()},
            Plateau(
                self.patience,
                best=math.inf if plateau[0] is None else float(plateau[0]),
                since=plateau[1],
                first_decay=plateau[2],
            ),
        )
