"""Layer-wise backward reconstruction — Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on Privacy",
ICLR 2021, arXiv:2010.07733; Chen & Campbell, "Understanding Training-Data Leakage from Gradients in
Neural Networks for Image Classification", NeurIPS 2021 Workshop, arXiv:2111.10178 (BMVC 2022
follow-up arXiv:2210.13231).

One sample (B=1), cross-entropy, a plain chain of Linear/Conv2d layers with invertible element-wise
activations (LeakyReLU, sigmoid, tanh, softplus, BatchNorm in eval mode). Starting at the head:

1. the head's error ``δ`` comes from its bias gradient, or without bias from the rank-one matrix
   ``∇W Wᵀ = δ zᵀ`` and the softmax (PAPERS.md §3); the head input is ``x = δᵀ∇W/‖δ‖²`` and the label
   is the one negative entry of ``δ``;
2. going down, ``z = σ⁻¹(x)`` and ``δ = (Wᵀδ_above) ⊙ σ'(z)``; each Linear layer's input follows from
   its gradient rows alone, each convolution's from ``[W; I ⊗ D₁(δ)] x = [z − b; vec ∇K]`` solved as in
   :func:`gradleak.attacks.analytic.linalg.solve_conv` (gradient rows exactly, then the weight rows; under-determined
   directions keep the minimum norm, as R-GAP's ``lstsq``).

``rgap`` is that recursion. ``layerwise`` (Chen & Campbell) adds, where a layer is rank deficient, the
pull-back constraint that its input is the image of the layer below, ``σ⁻¹(x) − b ∈ range(W_below)``
(linearised at the current estimate and re-solved a few times; our reading of their objective), and
optionally refines the input with gradient matching (cosine + TV + the layer's least-squares term),
the hybrid of the BMVC paper with a CPU-sized budget. Per-layer ranks are reported: where the rank
condition fails the reconstruction degrades, as :mod:`gradleak.analyze` predicts. Example::

    result = RGAP().run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ...protocols import FedSGD
from ..base import Attack, AttackResult, attack
from ..common import denormalize
from ..steps import StepCallback, no_progress
from .linalg import DTYPE, RANK_RTOL, LayerSolution, dense_operator, solve_conv, solve_fc, solve_head
from .trace import Op, trace_chain


@dataclass
class ChainInversion:
    """The recovered input (model space, [1, C, H, W]), label and per-layer solutions."""

    x: Tensor
    label: int
    layers: list[LayerSolution]
    head: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "head": self.head, "layers": [l.to_json() for l in self.layers]}


def layerwise_problems(obs: Observation, method: str) -> tuple[list[Op], list[str]]:
    """The traced chain and every unmet need of the layer-wise methods on ``obs``."""
    problems: list[str] = []
    if obs.kind != "gradient":
        problems.append(f"{method} inverts one gradient (FedSGD); this update is a {obs.protocol.name} parameter delta")
    if obs.batch_size != 1:
        problems.append(
            f"{method} reconstructs one sample (B=1); the batch size is "
            f"{'unknown' if obs.batch_size is None else obs.batch_size}"
        )
    try:
        ops, chain_problems = trace_chain(obs.model, tuple(obs.input_shape))
    except InputError as e:
        return [], problems + [str(e)]
    problems += chain_problems
    affine = [o for o in ops if o.kind == "affine"]
    if not affine or affine[-1].name != obs.head or ops[-1] is not affine[-1]:
        problems.append(f"the chain must end in the head {obs.head!r} (a Linear layer) with nothing after it")
    if any(o.module is not None and o.module.training and isinstance(o.module, nn.Dropout) for o in ops):
        problems.append("dropout in train mode makes the forward pass random")
    return ops, problems


def _below_range_complement(op_below: Op, rtol: float) -> Tensor | None:
    """An orthonormal basis [n_out, k] of the complement of range(W_below), or None if it is onto."""
    w = dense_operator(op_below.layer(), op_below.in_shape)  # [n_out, n_in]
    if w.shape[0] <= w.shape[1]:
        s = torch.linalg.svdvals(w) if w.shape[0] <= 2000 else torch.linalg.eigvalsh(w @ w.T).clamp_min(0).sqrt()
        if int((s > rtol * s.max()).sum()) >= w.shape[0]:
            return None
    evals, evecs = torch.linalg.eigh(w @ w.T)
    keep = evals <= (rtol * evals.max().sqrt()) ** 2
    return evecs[:, keep] if bool(keep.any()) else None


def invert_chain(
    obs: Observation,
    ops: list[Op],
    *,
    rtol: float = RANK_RTOL,
    pullback: bool = False,
    pullback_steps: int = 3,
    on_layer=None,
) -> ChainInversion:
    """Run the backward recursion on a traced chain (see the module docstring)."""
    upd = {k: v.detach().to(DTYPE) for k, v in obs.update.items()}
    head = ops[-1]
    hm = head.layer()
    hw = hm.weight.detach().to(DTYPE)
    gb = upd.get(f"{head.name}.bias") if hm.bias is not None else None
    delta, label, info = solve_head(hw, upd[f"{head.name}.weight"], gb)
    sol = solve_fc(head.name, upd[f"{head.name}.weight"], delta)
    layers = [sol]
    x, g = sol.solved(), hw.T @ delta
    n_ops = len(ops) - 1
    for i in range(n_ops - 1, -1, -1):
        op = ops[i]
        if op.kind == "reshape":
            x, g = x.reshape(op.in_shape), g.reshape(op.in_shape)
        elif op.kind == "invertible":
            z = op.inverse(x)
            g = g * op.derivative(z, x)
            x = z
        elif op.kind == "affine":
            m = op.layer()
            gw = upd[f"{op.name}.weight"]
            wt = m.weight.detach().to(DTYPE)
            if isinstance(m, nn.Linear):
                if m.bias is not None and f"{op.name}.bias" in upd:
                    pass  # the bias gradient equals δ; the weight rows already fix x
                sol = solve_fc(op.name, gw, g.flatten())
                x_in, g_in = sol.solved(), wt.T @ g.flatten()
            else:
                sol = solve_conv(op.name, m, op.in_shape, x, g, gw, rtol=rtol)
                if pullback and sol.deficiency < 0:
                    sol = _with_pullback(obs, ops, i, m, op, x, g, gw, sol, rtol, pullback_steps)
                x_in = sol.solved().view(op.in_shape)
                g_in = conv2d_input((1, *op.in_shape), wt, g.unsqueeze(0), m.stride, m.padding)[0]
            layers.append(sol)
            if on_layer is not None:
                on_layer(sol)
            x, g = x_in, g_in
        else:
            raise InputError(f"{op.name}: {op.what} cannot be inverted")
    for s in layers:
        s.x = None
    return ChainInversion(x.reshape(1, *obs.input_shape), label, layers[::-1], info)


def _with_pullback(
    obs: Observation,
    ops: list[Op],
    i: int,
    m: nn.Conv2d,
    op: Op,
    z: Tensor,
    delta: Tensor,
    gw: Tensor,
    sol: LayerSolution,
    rtol: float,
    steps: int,
) -> LayerSolution:
    """Re-solve a deficient layer with ``Q_⊥ᵀ (σ⁻¹(x) − b_below) = 0`` (x is the image of the layer below),
    linearised at the current estimate."""
    j = i - 1
    acts = []
    while j >= 0 and ops[j].kind in ("invertible", "reshape"):
        if ops[j].kind == "invertible":
            acts.append(ops[j])
        j -= 1
    if j < 0 or ops[j].kind != "affine" or len(acts) != 1:
        return sol
    below, act = ops[j], acts[0]
    q = _below_range_complement(below, rtol)
    if q is None:
        return sol
    below_bias = below.layer().bias
    bias = (
        below_bias.detach().to(DTYPE).repeat_interleave(int(torch.tensor(below.out_shape[1:]).prod()))
        if below_bias is not None
        else torch.zeros(q.shape[0], dtype=DTYPE)
    )
    pattern = None
    for _ in range(steps):
        xh = sol.solved().reshape(op.in_shape)
        if act.what == "leaky_relu":  # piecewise linear: stop once the sign pattern is stable
            now = xh > 0
            if pattern is not None and bool((now == pattern).all()):
                break
            pattern = now
        zh = act.inverse(xh)
        jac = 1.0 / act.derivative(zh, xh).flatten()  # dσ⁻¹/dx at the estimate
        mat = q.T * jac  # Q_⊥ᵀ J
        rhs = q.T @ (jac * xh.flatten() - zh.flatten() + bias)
        sol = solve_conv(op.name, m, op.in_shape, z, delta, gw, rtol=rtol, extra=(mat, rhs))
    return sol


def gradient_distance(obs: Observation, x: Tensor, labels: list[int]) -> float:
    """Relative L2 distance between the update replayed at ``x`` and the observed one (no ground truth)."""
    net, params = obs.functional()
    upd = FedSGD().update_fn(net)(params, x.float(), torch.tensor(labels))
    num = sum(float((upd[k] - obs.update[k]).pow(2).sum()) for k in upd)
    den = sum(float(obs.update[k].pow(2).sum()) for k in upd)
    return (num / max(den, 1e-300)) ** 0.5


@dataclass(frozen=True, kw_only=True)
class RGAPConfig:
    """R-GAP has no tunable settings beyond the numerical rank tolerance (singular values below
    ``rtol``·max are treated as zero)."""

    rtol: float = RANK_RTOL


@attack("rgap")
class RGAP(Attack):
    """R-GAP: recursive closed-form reconstruction, one linear system per layer from the head backwards.

    Paper: Zhu & Blaschko ICLR 2021. Needs: one sample (B=1), a FedSGD gradient, invertible activations
    (LeakyReLU, sigmoid, tanh), no pooling and no train-mode BatchNorm; ``check`` lists every unmet need.
    Settings (:class:`RGAPConfig`): ``rtol`` of the numerical rank."""

    paper = "Zhu & Blaschko ICLR 2021, arXiv:2010.07733"
    Config: ClassVar[type] = RGAPConfig
    pullback = False

    def problems(self, obs: Observation) -> list[str]:
        return layerwise_problems(obs, self.name)[1]

    def _invert(self, obs: Observation, ops: list[Op], on_step: StepCallback) -> ChainInversion:
        from ..steps import Step

        n = sum(o.kind == "affine" for o in ops)
        done = [1]

        def on_layer(sol: LayerSolution) -> None:
            done[0] += 1
            on_step(Step(done[0], n, float(sol.residual), sol.name))

        return invert_chain(obs, ops, rtol=self.config.rtol, pullback=self.pullback, on_layer=on_layer)

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        t0 = time.perf_counter()
        ops, problems = layerwise_problems(obs, self.name)
        if problems:
            from ...errors import UnsupportedError

            raise UnsupportedError(self.name, problems)
        inv = self._invert(obs, ops, on_step)
        x = inv.x.float()
        stages: dict[str, Tensor] = {}
        curve: list[tuple[int, float]] = []
        iterations = 0
        x, stages, curve, iterations = self._refine(obs, inv, x, generator, on_step)
        dist = gradient_distance(obs, x, [inv.label])
        assumptions = {
            "batch_size": 1,
            "loss": "cross-entropy",
            "label": "recovered from the head gradient",
            "layers": inv.to_json()["layers"],
            "head": inv.head,
            "deficient_layers": [l.name for l in inv.layers if l.deficiency < 0],
        }
        return AttackResult(
            name=self.name,
            images=denormalize(obs, x),
            iterations=iterations,
            seconds=time.perf_counter() - t0,
            final_loss=dist,
            loss_curve=curve,
            labels=[inv.label],
            stages=stages,
            assumptions=assumptions,
            config=self.config_json(),
        )

    def _refine(
        self, obs: Observation, inv: ChainInversion, x: Tensor, generator: torch.Generator, on_step: StepCallback
    ) -> tuple[Tensor, dict[str, Tensor], list[tuple[int, float]], int]:
        return x, {}, [], 0


@dataclass(frozen=True, kw_only=True)
class LayerwiseConfig:
    """Chen & Campbell's layer-wise reconstruction: per-layer solve with the pull-back constraint, then
    ``refine_iterations`` of Adam (lr ``lr``) on ``w_c·(1 − cos) + w_tv·TV`` from the analytic solution
    (the BMVC paper runs 10 000 steps at the input layer with (w_c, w_tv) = (1, 1); cut here for a CPU
    audit — 0 gives the pure analytic solution)."""

    rtol: float = RANK_RTOL
    pullback_steps: int = 8
    refine_iterations: int = 0
    lr: float = 0.01
    tv: float = 1e-4


@attack("layerwise")
class Layerwise(RGAP):
    """Layer-wise reconstruction: R-GAP's backward pass with Chen & Campbell's pull-back constraint in each
    layer's solve (``pullback_steps``), then ``refine_iterations`` of Adam on cosine + TV (0: the analytic
    solution alone).

    Papers: Chen & Campbell 2021/2022. Needs: what :class:`RGAP` needs. Settings: :class:`LayerwiseConfig`."""

    paper = "Chen & Campbell NeurIPS-W 2021, arXiv:2111.10178; BMVC 2022, arXiv:2210.13231"
    Config = LayerwiseConfig
    pullback = True

    def _invert(self, obs: Observation, ops: list[Op], on_step: StepCallback) -> ChainInversion:
        return invert_chain(obs, ops, rtol=self.config.rtol, pullback=True, pullback_steps=self.config.pullback_steps)

    def _refine(
        self, obs: Observation, inv: ChainInversion, x: Tensor, generator: torch.Generator, on_step: StepCallback
    ) -> tuple[Tensor, dict[str, Tensor], list[tuple[int, float]], int]:
        c = self.config
        if c.refine_iterations <= 0:
            return x, {}, [], 0
        from ..matching import MatchingConfig, MatchingProblem, run_matching

        cfg = MatchingConfig(
            iterations=c.refine_iterations,
            distance="cosine",
            lr=c.lr,
            signed=False,
            schedule="cosine",
            tv=c.tv,
            box=True,
            log_every=10,
        )
        problem = MatchingProblem(obs, torch.tensor([inv.label]), cfg)
        match = run_matching(problem, batch_size=1, generator=generator, on_step=on_step, init=x, stage="refine")
        return match.x, {"analytic": denormalize(obs, x)}, match.curve, match.iterations
