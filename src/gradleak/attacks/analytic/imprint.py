"""Recovery from an imprint block — Fowl, Geiping, Czaja, Goldblum & Goldstein, "Robbing the Fed: Directly
Obtaining Private Data in Federated Learning with Modified Models", ICLR 2022 (arXiv:2110.13057). PAPERS.md §7.

The server sent a model with an imprint block in front (:mod:`gradleak.servers.imprint`): unit ``i`` of its first
layer fires iff the measurement ``h(x)`` exceeds the threshold ``c_i``, and every unit receives the same upstream
gradient ``g_s`` of sample ``s``. So the gradients of unit ``i`` are cumulative sums,
``∂L/∂W_i = Σ_{h_s > c_i} g_s x_s`` and ``∂L/∂b_i = Σ_{h_s > c_i} g_s``, and differences of neighbouring units
isolate the bin ``c_i < h ≤ c_{i+1}`` (the top unit alone is the top bin ``h > c_{K−1}``):
``ΔW_i = Σ_{s in bin i} g_s x_s``, ``Δb_i = Σ_{s in bin i} g_s``. A bin that holds one sample gives it exactly,
``x = ΔW_i / Δb_i``; a bin with several gives a ``g``-weighted mixture of them.

Secure aggregation changes nothing: the mean of N clients' gradients is the same sums over all N·B samples scaled
by ``1/(N·B)``, which the ratio cancels; every sample alone in its bin across the whole aggregate is recovered.

Which bins hold exactly one sample cannot be known for sure. What is observable:

- a bin holds samples iff ``|Δb_i|`` exceeds ``hit_rtol`` × the largest ``|∂L/∂b_j|`` (empty bins differ by
  rounding error only);
- a candidate is *consistent* when its own measurement falls in its bin and its pixels in [0, 1] (both within
  ``tol``): a lone sample is, up to rounding (in float32 a lone sample with a tiny ``g_s`` can come out a few
  percent off and fail); a mixture is whenever its samples' ``g_s`` have the same sign (a convex combination), so
  consistency rules out some mixtures but does not prove a candidate exact;
- with ``m`` bins hit by ``n`` samples, at least ``2m − n`` bins hold exactly one sample (all of them when
  ``m = n``).

Where the block is: the server's record names it. Without a record (a client checking its own update, e.g.
:class:`gradleak.guard.LeakageGuard`, knows the model it received but not the server's intent) the block is found in
the model: its first layer, when that is an ``nn.Linear`` with bias whose rows all point the same way (one
measurement with staggered thresholds, parallel to ``PARALLEL_RTOL``); any other model is refused. Honest layers are
never that close to parallel (the model check's ``collinear_rows``: at most 0.88 over 90 honest models).

Output (when the batch size ``n`` is known, as breaching's ``breach_padding``): consistent candidates first, then
the others, each group by decreasing ``|Δb|``; cut to ``n`` if there are more (only rounding noise or a defense
makes that happen), padded to ``n`` with zero inputs (the dataset's mean image) if fewer. Breaching instead keeps
every unit after the lowest as a difference with the one below and the lowest unit's whole-batch sum as a hit of its
own, which loses the top bin; here all K bins are used.

Example::

    result = ImprintRecovery().run(obs, generator=torch.Generator().manual_seed(0))
    result.assumptions["bins_hit"], result.assumptions["singletons_at_least"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import denormalize
from ..steps import StepCallback, no_progress
from .fc import first_linear

#: rows count as one measurement when every row's cosine with the first row is above ``1 − PARALLEL_RTOL``
PARALLEL_RTOL = 1e-6


@dataclass(frozen=True, kw_only=True)
class ImprintRecoveryConfig:
    """``hit_rtol``: a bin holds samples where ``|Δb|`` exceeds this × the largest ``|∂L/∂b|`` (empty bins differ by
    rounding error only: exactly 0 in the benchmark's float32 aggregates, where lone samples' ``|Δb|`` went down
    to 5e-5 of it); ``tol``: slack of the consistency check, as a fraction of the bin's width for the measurement and
    in [0, 1] pixel units for the range."""

    hit_rtol: float = 1e-5
    tol: float = 1e-2

    def __post_init__(self) -> None:
        if not 0 <= self.hit_rtol < 1:
            raise InputError(f"imprint: hit_rtol must be in [0, 1), got {self.hit_rtol}")
        if not self.tol >= 0:
            raise InputError(f"imprint: tol must be >= 0, got {self.tol}")


def bin_differences(gw: Tensor, gb: Tensor) -> tuple[Tensor, Tensor]:
    """Per bin (units in ascending threshold order) the sums ``ΔW [K, d]`` and ``Δb [K]`` of its samples alone."""
    dw, db = gw.clone(), gb.clone()
    dw[:-1] -= gw[1:]
    db[:-1] -= gb[1:]
    return dw, db


def block_of(obs: Observation) -> tuple[tuple[str, str] | None, list[str]]:
    """The imprint block's (weight, bias) parameter names, from the server's record or, without one, found in the
    model (see the module docstring); ``None`` and the reasons when there is none."""
    record = obs.server
    if record is not None:
        if record.get("name") != "imprint":
            return None, [f"the server's record is of {record.get('name')!r}, not of an imprint block"]
        return (str(record["weight"]), str(record["bias"])), []
    name, _, problems = first_linear(obs)
    what = "no server record, and the model's first layer is not an imprint block"
    if name is None or problems:
        return None, [f"{what}: " + "; ".join(problems)]
    w = dict(obs.model.named_parameters())[f"{name}.weight"].detach().double()
    norms = w.norm(dim=1)
    if len(w) < 2 or bool((norms == 0).any()):
        return None, [f"{what}: {name} needs at least 2 non-zero rows"]
    u = w / norms[:, None]
    spread = float((1 - u @ u[0]).max())
    if spread > PARALLEL_RTOL:
        return None, [f"{what}: the rows of {name} are not parallel (1 - cos up to {spread:.2g}; one measurement: 0)"]
    return (f"{name}.weight", f"{name}.bias"), []


def in_bin(z: Tensor, bins: Tensor, width: Tensor, tol: float) -> Tensor:
    """Whether each candidate's pre-activations ``z [m, K]`` (``z_i = gain·(h − c_i)``) put it in its own bin."""
    rows = torch.arange(len(bins))
    slack = tol * width[bins]
    above_lower = z[rows, bins] >= -slack
    upper = (bins + 1).clamp(max=z.shape[1] - 1)
    below_upper = (bins == z.shape[1] - 1) | (z[rows, upper] <= slack)
    return above_lower & below_upper


def singletons_at_least(hit: int, n: int | None) -> int | None:
    """How many of ``hit`` non-empty bins surely hold one sample each, for ``n`` samples (``None``: unknown, or
    more bins hit than samples, which only noise explains)."""
    return None if n is None or hit > n else max(0, 2 * hit - n)


def in_range(obs: Observation, x: Tensor, tol: float) -> Tensor:
    """Whether each candidate (normalised, flattened) lies in [0, 1] within ``tol`` once denormalised."""
    img = x.view(len(x), *obs.input_shape)
    if obs.normalization is not None:
        img = obs.normalization.denormalize(img)
    flat = img.flatten(1)
    return ((flat >= -tol) & (flat <= 1 + tol)).all(1)


@attack("imprint")
class ImprintRecovery(Attack):
    """Read the samples alone in their bin off an imprint block's gradient (Fowl et al. ICLR 2022).

    Needs: an imprint block — named by the observation's server record of the ``imprint`` strategy (``--server
    imprint``), or found as the model's first layer without a record — and its gradient (FedSGD; any number of
    securely aggregated clients). Settings: :class:`ImprintRecoveryConfig`; the
    rule for which candidates are returned is in the module docstring."""

    paper = "Fowl, Geiping, Czaja, Goldblum & Goldstein, ICLR 2022 (arXiv:2110.13057), Robbing the Fed"
    Config = ImprintRecoveryConfig

    def problems(self, obs: Observation) -> list[str]:
        if obs.kind != "gradient":  # decides alone, before the model is searched for a block
            return [f"needs one gradient (FedSGD): local steps of {obs.protocol.name} move the block's thresholds"]
        names, problems = block_of(obs)
        if names is None:
            return problems
        missing = [k for k in names if k not in obs.update]
        if missing:
            problems.append(f"the update has no gradient of the imprint block's {', '.join(map(str, missing))}")
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
        cfg = self.config
        names, _ = block_of(obs)
        assert names is not None  # self.check passed
        params = dict(obs.model.named_parameters())
        weight, bias = (params[k].detach().double() for k in names)
        gain = weight.norm(dim=1)  # unit i: ReLU(gain_i · (h(x) − c_i)), c_i = −b_i / gain_i
        order = (bias / gain).argsort(descending=True)  # ascending thresholds
        gw = obs.update[names[0]].detach().double()[order]
        gb = obs.update[names[1]].detach().double()[order]
        weight, bias = weight[order] / gain[order, None], bias[order] / gain[order]  # z_i = h(x) − c_i
        dw, db = bin_differences(gw, gb)
        hit = db.abs() > cfg.hit_rtol * gb.abs().max()
        bins = torch.nonzero(hit).flatten()
        x = dw[bins] / db[bins, None]
        width = torch.cat([bias[:-1] - bias[1:], (bias[-2:-1] - bias[-1:])])  # c_{i+1} − c_i; top: the last one
        consistent = in_bin(x @ weight.T + bias, bins, width, cfg.tol) & in_range(obs, x, cfg.tol)
        rank = sorted(range(len(bins)), key=lambda j: (not bool(consistent[j]), -float(db[bins[j]].abs())))
        n = obs.batch_size
        keep = rank if n is None else rank[:n]
        out = x[keep]
        padded = 0 if n is None else max(0, n - len(keep))
        if padded:
            out = torch.cat([out, out.new_zeros(padded, x.shape[1])])
        m = len(bins)
        images = denormalize(obs, out.to(obs.dtype).view(len(out), *obs.input_shape))
        assumptions: dict[str, Any] = {
            "layer": names[0].rsplit(".", 1)[0],
            "block_from": "the server's record" if obs.server is not None else "the model",
            "bins": len(bias),
            "bins_hit": m,
            "consistent": int(consistent.sum()),
            "consistent_flags": [bool(consistent[j]) for j in keep] + [False] * padded,
            "bins_of_returned": [int(bins[j]) for j in keep],
            "returned": len(keep),
            "padded": padded,
            "cut": m - len(keep),
            "batch_size": n,
            "clients": obs.clients,
            "singletons_at_least": singletons_at_least(m, n),
        }
        return AttackResult(
            name=self.name,
            images=images,
            iterations=0,
            seconds=time.perf_counter() - t0,
            final_loss=0.0,
            labels=None if labels is None else list(labels.labels),
            assumptions=assumptions,
            config=self.config_json(),
        )
