"""GradInversion — Yin, Mallya, Vahdat, Alvarez, Kautz & Molchanov, "See through Gradients: Image Batch
Recovery via GradInversion", CVPR 2021, arXiv:2104.07586 (PAPERS.md §2; no official code exists).

Each of |G| seeds x̂_g (optimised jointly: the engine ``vmap``s them as restarts) minimises

    α_G Σ_l ‖∇_{W_l}L(x̂_g, ŷ) − ΔW_l‖₂ + α_tv TV(x̂_g) + α_ℓ2 ‖x̂_g‖₂
    + α_BN Σ_l (‖μ_l(x̂_g) − μ_l^BN‖₂ + ‖σ²_l(x̂_g) − σ²_l^BN‖₂) + α_group ‖x̂_g − E_G‖₂

with Adam (lr 0.1, cosine decay, warm-up) plus Langevin noise ``lr(t)·α_n·η`` after every step.
``E_G``, the group consensus, is turned on after ``group_start`` of the run and refreshed every
``group_every``: the plain mean of the seeds ("lazy"), or the mean after registering every seed onto
that mean (:mod:`.registration`: phase correlation + affine fit, replacing the paper's
RANSAC-flow). BN targets are the model's running statistics, or the client batch's exact statistics
when a file of them is given (``bn_statistics``; see :func:`batch_statistics`). Labels are the ones
given, else the ``auto`` choice, as for every attack (the paper's min rule is ``gradinversion-min``:
pass its result to use it).

Output (``output="auto"``): the final registered/lazy consensus when the group term is on — the
paper's intent is that the seeds "work together to find an enhanced reconstruction" — and the seed
with the lowest gradient-matching loss otherwise; with several seeds both are kept in ``stages``
("best candidate", "consensus": the plain mean of the seeds when the group term is off), and
``final_loss`` is the gradient-matching distance of the returned output. Exact batch statistics
(``bn_statistics``) are an oracle input: ``assumptions["oracle_inputs"]`` names them. Because Adam is
invariant to the scale of the loss, α_G is applied by dividing every other weight by it. Example::

    result = GradInversion(iterations=2000, restarts=4).run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import batch_size_of, denormalize, label_targets, protocol_assumptions, to_result
from ..matching import MatchingConfig, MatchingProblem, lr_factor, matching_distances, run_matching
from ..steps import StepCallback, no_progress
from .registration import register

GROUP_MODES = ("registered", "lazy", "none")
OUTPUTS = ("auto", "consensus", "best")


@dataclass(frozen=True, kw_only=True)
class GradInversionConfig:
    """Defaults of Yin et al. 2021 (PAPERS.md §2); the budget is cut from 20 000 iterations and
    |G| = 8 seeds to fit a CPU audit. ``group_start`` and ``group_every`` are fractions of the run
    (paper: 5 000 and 100 of 20 000)."""

    iterations: int = 2000
    restarts: int = 4  # |G|: the group's seeds, optimised as batched restarts
    lr: float = 0.1
    warmup: int = 50
    grad_weight: float = 1e-3  # α_G (breaching uses 1e-4)
    distance: str = "layer_l2"  # the paper's Σ_l ‖·‖₂; "cosine" as in Inverting Gradients
    tv: float = 1e-4
    l2: float = 1e-6
    bn: float = 0.1
    bn_statistics: str = "running"  # "running" or a .safetensors file of exact batch statistics
    group: str = "registered"  # "registered" | "lazy" | "none"
    group_weight: float = 0.01
    group_start: float = 0.25
    group_every: float = 0.005
    noise: float = 0.2  # α_n of the Langevin update
    output: str = "auto"  # "auto" | "consensus" | "best"
    log_every: int = 10
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.group not in GROUP_MODES:
            problems.append(f"group must be one of {GROUP_MODES}, got {self.group!r}")
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.restarts < 1 or self.iterations < 1:
            problems.append(f"restarts (seeds) and iterations must be >= 1, got {self.restarts}, {self.iterations}")
        if not self.grad_weight > 0:
            problems.append(f"grad_weight must be > 0, got {self.grad_weight}")
        if not 0 <= self.group_start <= 1 or not 0 < self.group_every <= 1:
            problems.append("group_start must be in [0, 1] and group_every in (0, 1] (fractions of the run)")
        if problems:
            raise InputError("invalid GradInversion settings:\n" + "\n".join(f"  - {p}" for p in problems))


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def batch_statistics(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The exact per-BatchNorm-layer batch mean and (biased) variance of the normalised input ``x``:
    ``{"<module>.mean": ..., "<module>.var": ...}`` — what a client leaks if it shares its BN buffers
    (or what an oracle upper bound assumes). The forward runs in the model's own mode — the client's:
    in eval mode the deeper layers' inputs depend on the running statistics, and the BN term compares
    them with the candidate's inputs from the same forward — on a copy, so no buffer is touched."""
    import copy

    net = copy.deepcopy(model)
    out: dict[str, Tensor] = {}
    hooks = []
    for name, m in bn_layers(net):

        def hook(mod: nn.Module, inp: tuple[Tensor, ...], name: str = name) -> None:
            h = inp[0]
            dims = [0] + list(range(2, h.dim()))
            out[f"{name}.mean"] = h.mean(dims).clone()
            out[f"{name}.var"] = h.var(dims, unbiased=False).clone()

        hooks.append(m.register_forward_pre_hook(hook))
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def save_batch_statistics(model: nn.Module, x: Tensor, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in batch_statistics(model, x).items()}, str(path))
    return path


def load_bn_targets(model: nn.Module, path: str | Path) -> list[tuple[Tensor, Tensor]]:
    """Per-layer (mean, var) in module order from a file written by :func:`save_batch_statistics`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"BN statistics file {path} does not exist (write it with save_batch_statistics)")
    stats = load_file(str(path))
    targets, missing = [], []
    for name, _m in bn_layers(model):
        if f"{name}.mean" not in stats or f"{name}.var" not in stats:
            missing.append(name)
            continue
        targets.append((stats[f"{name}.mean"], stats[f"{name}.var"]))
    if missing:
        raise InputError(f"{path} lacks the statistics of BatchNorm layer(s) {missing[:3]}")
    return targets


class GroupConsensus:
    """The group term ``α·‖x̂_g − E_G‖₂`` and its state: ``post_step`` refreshes ``E_G`` from the
    seeds [R, B, C, H, W] every ``every`` iterations from ``start`` on, and adds Langevin noise."""

    def __init__(self, mode: str, weight: float, start: int, every: int, noise: float, cfg: MatchingConfig, seed: int):
        self.mode, self.weight, self.start, self.every = mode, weight, start, every
        self.noise, self.cfg, self.seed = noise, cfg, seed
        self.consensus: Tensor | None = None
        self.eps = 1e-3
        self.box: tuple[Tensor, Tensor] | None = None  # the problem's image box, applied before E_G

    def term(self, x: Tensor) -> Tensor:
        if self.consensus is None or self.mode == "none" or not self.weight:
            return x.new_zeros(())
        # ‖·‖₂ smoothed at 0 (√(‖d‖² + ε²) − ε): the plain norm's gradient has the full weight's
        # magnitude however small d is, so rounding noise in E_G would push seeds that already agree
        d = (x - self.consensus).pow(2).sum()
        return self.weight * ((d + self.eps**2).sqrt() - self.eps)

    def compute(self, X: Tensor) -> Tensor:
        """E_G from the seeds X [R, B, C, H, W]: the mean, or the mean of the seeds registered onto it."""
        X = X.detach()
        mean = X[0] + (X - X[0]).mean(0)  # = X.mean(0), and exactly X[0] when the seeds agree
        if self.mode != "registered" or X.shape[0] == 1:
            return mean
        r, b = X.shape[:2]
        fixed = mean.unsqueeze(0).expand_as(X).reshape(r * b, *X.shape[2:])
        aligned = register(X.reshape(r * b, *X.shape[2:]), fixed).aligned
        aligned = aligned.reshape(X.shape)
        return aligned[0] + (aligned - aligned[0]).mean(0)

    def post_step(self, it: int, X: Tensor) -> None:
        if self.noise:
            g = torch.Generator().manual_seed(self.seed + it)  # per-iteration: resumable runs match
            scale = self.cfg.lr * lr_factor(self.cfg, it) * self.noise
            X.add_(scale * torch.randn(X.shape, generator=g))
        if self.mode == "none" or not self.weight or it + 1 < self.start:
            return
        if self.box is not None:
            X.copy_(torch.maximum(torch.minimum(X, self.box[1]), self.box[0]))
        if self.consensus is None or (it + 1 - self.start) % self.every == 0:
            self.consensus = self.compute(X)


@attack("gradinversion")
class GradInversion(Attack):
    """GradInversion: per-layer gradient matching with TV, l2 and BatchNorm-statistics fidelity, Langevin noise
    and a group-consistency term over several seeds (lazy mean or registered consensus).

    Paper: Yin et al. CVPR 2021. Needs: labels (``labels=None``: ``auto``; the paper's min rule is the
    ``gradinversion-min`` label method); BatchNorm layers for the BN term. Main settings
    (:class:`GradInversionConfig`): ``iterations``, ``restarts`` (the group's seeds), the α weights, ``group``,
    ``bn_statistics`` (an oracle file of the client batch's statistics, marked as such)."""

    paper = "Yin et al. CVPR 2021, arXiv:2104.07586"
    Config = GradInversionConfig

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
        batch = batch_size_of(obs, labels, self.name)
        has_bn = any(m.running_mean is not None for _, m in bn_layers(obs.model))
        bn_targets: Sequence[tuple[Tensor, Tensor]] | None = None
        if c.bn_statistics != "running" and c.bn:
            bn_targets = load_bn_targets(obs.model, c.bn_statistics)
            has_bn = bool(bn_targets)
        bn_on = bool(c.bn) and has_bn
        scale = 1.0 / c.grad_weight
        cfg = MatchingConfig(
            iterations=c.iterations,
            restarts=c.restarts,
            distance=c.distance,
            lr=c.lr,
            signed=False,
            schedule="cosine",
            warmup=c.warmup,
            tv=c.tv * scale,
            l2=c.l2 * scale,
            bn=c.bn * scale if bn_on else 0.0,
            log_every=c.log_every,
        )
        start = round(c.group_start * c.iterations)
        every = max(1, round(c.group_every * c.iterations))
        group_on = c.group != "none" and c.group_weight > 0 and c.restarts > 1
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        group = GroupConsensus(
            c.group if group_on else "none", c.group_weight * scale, start, every, c.noise, cfg, noise_seed
        )
        problem = MatchingProblem(obs, targets, cfg, extra_terms=[group.term], bn_targets=bn_targets)
        group.box = (problem.lower, problem.upper) if cfg.box else None
        match = run_matching(
            problem,
            batch_size=batch,
            generator=generator,
            on_step=on_step,
            checkpoint=c.checkpoint,
            post_step=group.post_step,
        )
        assert match.all_x is not None
        # the seeds' consensus (registered or plain mean) is computed for every run with several seeds, so
        # that an ablation can compare best seed and consensus in every row
        final_consensus = group.compute(match.all_x) if c.restarts > 1 else match.x
        problem.clamp_(final_consensus)
        output = c.output if c.output != "auto" else ("consensus" if group_on else "best")
        final_loss = match.restart_losses[match.best_restart]
        if output == "consensus":
            match.x = final_consensus
            final_loss = float(matching_distances(problem, final_consensus.unsqueeze(0))[0])
        stages = {"best candidate": denormalize(obs, match.all_x[match.best_restart])}
        if c.restarts > 1:
            stages["consensus"] = denormalize(obs, final_consensus)
        assumptions: dict[str, Any] = protocol_assumptions(obs)
        oracle = bool(bn_targets)
        assumptions["bn_term"] = (
            "off: the model has no BatchNorm layers with running statistics"
            if not has_bn
            else "off (bn weight 0)"
            if not c.bn
            else "on: exact batch statistics of the client's images (oracle input) from " + c.bn_statistics
            if oracle
            else "on: the model's running statistics"
        )
        if oracle:
            assumptions["oracle_inputs"] = {
                "bn_statistics": "exact per-layer batch mean/variance of the client's images: an upper bound "
                "unless the client shares them; a server that sees only the update does not have them"
            }
        assumptions["group"] = (
            f"{c.group}, {c.restarts} seeds, on from iteration {start}, refreshed every {every}" if group_on else "off"
        )
        assumptions["output"] = output
        assumptions["labels"] = labels.method
        result = to_result(
            self.name,
            obs,
            match,
            t0,
            labels=labels.labels,
            restarts=c.restarts,
            config=self.config_json(),
            assumptions=assumptions,
            stages=stages,
        )
        result.final_loss = final_loss  # the returned output's matching distance (the consensus's, if returned)
        return result
