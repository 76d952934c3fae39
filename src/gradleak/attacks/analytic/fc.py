"""Exact input recovery through a fully connected layer with bias — Phong, Aono, Hayashi, Wang &
Moriai, "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption", IEEE TIFS 2018
(the observation ``x = ∂L/∂W_n / ∂L/∂b_n``); used by R-GAP (Zhu & Blaschko, ICLR 2021) for its FC
layers and, for batches, through rows one sample alone activates (as in Fowl et al., "Robbing the
Fed", ICLR 2022, without a malicious server). See PAPERS.md §3.

For one sample through ``z = W x + b``: ``∇W = δ xᵀ`` and ``∇b = δ``, so every row with ``∇b_n ≠ 0``
gives ``x`` exactly; all rows together give ``x = Σ_n ∇b_n ∇W_n / Σ_n ∇b_n²``.

For a batch the rows are δ-weighted mixtures ``Σ_i δ_in x_i / Σ_i δ_in``. Behind a ReLU a unit that only
sample i activates has ``δ_jn = 0`` for every other j, so its ratio is exactly ``x_i``. Those rows are
found without ground truth: the ratios of two such rows for the same sample coincide to floating-point
precision, while mixtures of several samples almost surely do not. A sample is reported *exact* when
at least ``min_rows`` rows agree on it; samples without such rows get the ratio of their strongest
unmatched row, marked not exact. Example::

    result = FCExact().run(obs, generator=torch.Generator().manual_seed(0))
    result.assumptions["exact"]   # which reconstructions are exact
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import denormalize, gradient_problems
from ..steps import StepCallback, no_progress
from .trace import classify_node, symbolic_trace


@dataclass(frozen=True, kw_only=True)
class FCExactConfig:
    """``min_rows`` rows must agree (relative distance below ``agree_tol``) for a batch sample to count
    as exact; rows with ``|∂L/∂b_n|`` below ``bias_rtol`` × the largest are ignored. Single-sample rows
    of float32 gradients agree to ~2e-8; mixtures of samples with the same label and nearly equal
    predictions were seen agreeing to 1e-5 (bundled faces, B=8, two classes), hence 1e-6."""

    min_rows: int = 2
    agree_tol: float = 1e-6
    bias_rtol: float = 1e-6


def first_linear(obs: Observation) -> tuple[str | None, str | None, list[str]]:
    """(module path of the first layer, kind of the op after it, problems) of the observation's model."""
    return first_linear_layer(obs.model)


def first_linear_layer(model: nn.Module) -> tuple[str | None, str | None, list[str]]:
    """(module path of the model's first layer, kind of the op after it, problems): the layer must be the
    input's only consumer and an ``nn.Linear`` with bias (reshapes before it are skipped)."""
    try:
        gm = symbolic_trace(model)
    except InputError as e:
        return None, None, [str(e)]
    node = next(n for n in gm.graph.nodes if n.op == "placeholder")
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, None, ["the input feeds several operations; the first layer must be one nn.Linear"]
        node = users[0]
        if node.op == "output":
            return None, None, ["the model has no layer"]
        op = classify_node(gm, node)
        if op.kind == "reshape":
            continue
        if op.kind != "affine" or not isinstance(op.module, nn.Linear):
            return None, None, [f"the first layer is {op.what} ({op.name}), not a fully connected nn.Linear"]
        after = list(node.users)
        nxt = classify_node(gm, after[0]).kind if len(after) == 1 and after[0].op != "output" else "output"
        return (
            op.name,
            nxt,
            (
                []
                if op.module.bias is not None
                else [f"the first layer {op.name} has no bias: the input is known only up to scale"]
            ),
        )


def recover_batch(gw: Tensor, gb: Tensor, cfg: FCExactConfig, batch_size: int) -> tuple[Tensor, list[bool], list[int]]:
    """Candidates [B, d], whether each is exact, and how many rows agreed on each."""
    gw, gb = gw.double(), gb.double()
    keep = gb.abs() > cfg.bias_rtol * gb.abs().max()
    if batch_size == 1:
        x = (gb[keep] @ gw[keep]) / gb[keep].pow(2).sum()
        return x[None], [True], [int(keep.sum())]
    rows = torch.nonzero(keep).flatten()
    rows = rows[gb[rows].abs().argsort(descending=True)]
    cand = gw[rows] / gb[rows, None]
    norms = cand.norm(dim=1).clamp_min(1e-12)
    dist = torch.cdist(cand, cand) / torch.minimum(norms[:, None], norms[None, :])
    # greedy grouping, strongest row first; in numpy, since a torch call per row costs more than the arithmetic
    d = dist.numpy()
    near = d < cfg.agree_tol
    free = np.ones(len(rows), dtype=bool)
    groups: list[list[int]] = []
    spread: list[float] = []
    for i in range(len(rows)):
        if not free[i]:
            continue
        members = np.flatnonzero(near[i] & free)
        free[members] = False
        groups.append(members.tolist())
        spread.append(float(d[i, members].max()))
    # more agreeing rows first; among equals the tighter group (exact rows agree to rounding error)
    ranked = sorted(range(len(groups)), key=lambda k: (-len(groups[k]), spread[k]))
    exact = [groups[k] for k in ranked if len(groups[k]) >= cfg.min_rows][:batch_size]
    out = [cand[g].mean(0) for g in exact]
    flags, counts = [True] * len(out), [len(g) for g in exact]
    for g in groups:  # strongest rows first: fill the rest, not exact
        if len(out) >= batch_size:
            break
        if len(g) < cfg.min_rows:
            out.append(cand[g[0]])
            flags.append(False)
            counts.append(1)
    while len(out) < batch_size:
        out.append(torch.zeros(gw.shape[1], dtype=gw.dtype))
        flags.append(False)
        counts.append(0)
    return torch.stack(out), flags, counts


@attack("analytic_fc")
class FCExact(Attack):
    """Exact input recovery through a fully connected first layer with bias: ``x = ∂L/∂W_n / ∂L/∂b_n``.

    Paper: Phong et al. 2018; Zhu & Blaschko 2021 §3. Needs: the model's first op is an ``nn.Linear`` with
    bias (FedSGD gradient). For batches, a sample is exact where at least ``min_rows`` rows only it activates
    agree; such samples are flagged in the result. Settings: :class:`FCExactConfig` (no iterations)."""

    paper = "Phong et al. IEEE TIFS 2018; Zhu & Blaschko ICLR 2021 (arXiv:2010.07733) §3"
    Config = FCExactConfig

    def problems(self, obs: Observation) -> list[str]:
        if delta := gradient_problems(obs):  # decides alone, before the model is traced
            return delta
        name, after, problems = first_linear(obs)
        if obs.batch_size is None:
            problems.append("the batch size is unknown to the server")
        elif obs.batch_size > 1 and name is not None and after != "relu":
            problems.append(
                f"for a batch (B={obs.batch_size}) the first layer must be followed by a ReLU, whose "
                f"inactive units isolate single samples; here it is followed by {after}"
            )
        return problems

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        t0 = time.perf_counter()
        self.check(obs)
        name, _, _ = first_linear(obs)
        gw, gb = obs.update[f"{name}.weight"], obs.update[f"{name}.bias"]
        b = obs.known_batch_size()
        x, exact, counts = recover_batch(gw, gb, self.config, b)
        images = denormalize(obs, x.float().view(b, *obs.input_shape))
        return AttackResult(
            name=self.name,
            images=images,
            iterations=0,
            seconds=time.perf_counter() - t0,
            final_loss=0.0,
            labels=None if labels is None else list(labels.labels),
            assumptions={
                "layer": name,
                "exact": exact,
                "agreeing_rows": counts,
                "exact_count": sum(exact),
                "batch_size": b,
            },
            config=self.config_json(),
        )
