"""Recovery through trap weights — Boenisch et al., "When the Curious Abandon Honesty: Federated Learning Is
Not Private", IEEE EuroS&P 2023, arXiv:2112.02918. See PAPERS.md §8 and :mod:`gradleak.servers.trap`.

A trap-weights server made each unit of the first fully connected layer fire for few samples. Every row with
``∂L/∂b_i ≠ 0`` gives ``x̂_i = ∂L/∂W_i / ∂L/∂b_i``: exactly the sample if it alone fired the unit, else a
mixture ``Σ_j δ_ji x_j / Σ_j δ_ji`` of the samples that did. The batch is selected from the rows by rules the
server can apply without ground truth:

1. rows whose reconstruction leaves the pixel range ``[0, 1]`` (after undoing the normalisation) by more than
   ``range_tol`` are dropped: they are mixtures with weights of both signs, never one sample;
2. the remaining rows are grouped when their reconstructions agree to ``agree_tol`` (relative distance): rows
   one sample alone fired agree to rounding error, mixtures almost surely do not
   (:func:`gradleak.attacks.analytic.fc.recover_batch`, the batch rule of the ``analytic_fc`` attack). Groups
   of at least ``min_rows`` rows are samples, flagged exact;
3. for the rest of the batch, every remaining row is projected off the span of the exact samples; rows
   whose reconstruction that span explains (relative residual below ``span_tol``) are mixtures of known
   samples and dropped. A row fired by one unknown sample ``u`` and any known ones leaves a residual
   parallel to ``u``'s, so the rows are grouped by the direction of their residual (1 − cosine below
   ``span_tol``); larger groups first, each group gives its row with the largest residual — for weights
   of one sign the row ``u`` fired alone, if there is one. These are not flagged exact (nothing verifies
   them); zeros fill the batch if rows run out.

Rule 3 is gradleak's; the paper reports the share of samples some row recovers exactly, and breaching keeps
the rows with the smallest bias gradient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import denormalize, gradient_problems
from ..steps import StepCallback, no_progress
from .fc import FCExactConfig, recover_batch


@dataclass(frozen=True, kw_only=True)
class TrapRecoveryConfig:
    """``min_rows`` agreeing rows make a sample exact; ``agree_tol`` and ``bias_rtol`` as in the ``analytic_fc``
    attack; ``range_tol``: how far outside [0, 1] a row's reconstructed pixels may lie (float32 rounding of an
    exact row stays below 1e-5); ``span_tol``: the relative residual under which the exact samples explain a
    row, and the 1 − cosine under which two residuals are one direction (the benchmark's selection is the
    same from 1e-5 to 1e-3)."""

    min_rows: int = 2
    agree_tol: float = 1e-6
    bias_rtol: float = 1e-6
    range_tol: float = 1e-4
    span_tol: float = 1e-4


@attack("trap")
class TrapRecovery(Attack):
    """Exact samples from the rows of trap weights one sample alone fired: ``x = ∂L/∂W_i / ∂L/∂b_i``.

    Paper: Boenisch et al. IEEE EuroS&P 2023. Needs: the record of a ``trap`` server (``--server trap``), a
    FedSGD gradient, the batch size. Settings: :class:`TrapRecoveryConfig` (no iterations)."""

    paper = "Boenisch et al. IEEE EuroS&P 2023, arXiv:2112.02918"
    Config = TrapRecoveryConfig

    def problems(self, obs: Observation) -> list[str]:
        problems: list[str] = []
        record = obs.server or {}
        layer = record.get("layer")
        if record.get("name") != "trap":
            problems.append("needs an update of a model with trap weights: the record of a trap server (--server trap)")
        elif f"{layer}.bias" not in obs.update or f"{layer}.weight" not in obs.update:
            problems.append(f"the trapped layer {layer!r} is not in the update")
        problems += gradient_problems(obs)
        if obs.batch_size is None:
            problems.append("the batch size is unknown to the server")
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
        c = self.config
        layer = str((obs.server or {})["layer"])
        gw, gb = obs.update[f"{layer}.weight"].double(), obs.update[f"{layer}.bias"].double()
        b = obs.known_batch_size()
        active = gb.abs() > c.bias_rtol * gb.abs().max()
        rows = torch.nonzero(active).flatten()
        cand = gw[rows] / gb[rows, None]
        pixels = self._pixels(obs, cand)
        in_range = (pixels.amin(1) >= -c.range_tol) & (pixels.amax(1) <= 1 + c.range_tol)
        kept = rows[in_range]
        known = gw.new_zeros(0, gw.shape[1])
        counts: list[int] = []
        if len(kept):
            fc = FCExactConfig(min_rows=c.min_rows, agree_tol=c.agree_tol, bias_rtol=0.0)
            x, exact, agreeing = recover_batch(gw[kept], gb[kept], fc, b)
            known, counts = x[: sum(exact)], agreeing[: sum(exact)]
        extra, groups = self._unexplained(cand[in_range], known, b - len(known))
        pad = gw.new_zeros(b - len(known) - len(extra), gw.shape[1])
        x = torch.cat([known, extra, pad])
        images = denormalize(obs, x.float().view(b, *obs.input_shape))
        return AttackResult(
            name=self.name,
            images=images,
            iterations=0,
            seconds=time.perf_counter() - t0,
            final_loss=0.0,
            labels=None if labels is None else list(labels.labels),
            assumptions={
                "layer": layer,
                "rows_active": int(active.sum()),
                "rows_in_range": int(in_range.sum()),
                "exact": [True] * len(known) + [False] * (b - len(known)),
                "agreeing_rows": counts + [0] * (b - len(known)),
                "exact_count": len(known),
                "unexplained_directions": groups,
                "batch_size": b,
            },
            config=self.config_json(),
        )

    def _unexplained(self, cand: torch.Tensor, known: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        """Up to ``n`` rows of ``cand`` that the ``known`` samples do not explain, one per residual direction
        (rule 3 of the module docstring), and how many directions there were."""
        if n <= 0 or not len(cand):
            return cand[:0], 0
        tol = self.config.span_tol
        residual = cand
        if len(known):
            q = torch.linalg.qr(known.T).Q
            residual = cand - (cand @ q) @ q.T
        norm = residual.norm(dim=1)
        keep = norm > tol * cand.norm(dim=1)
        cand, residual, norm = cand[keep], residual[keep], norm[keep]
        direction = residual / norm[:, None]
        close = (1 - direction @ direction.T) < tol
        free = torch.ones(len(cand), dtype=torch.bool)
        groups: list[tuple[int, int]] = []  # (size, row with the largest residual)
        for i in norm.argsort(descending=True).tolist():
            if free[i]:
                members = close[i] & free
                free &= ~members
                groups.append((int(members.sum()), i))
        ranked = sorted(groups, key=lambda g: -g[0])  # stable: equal sizes keep the larger residual first
        return cand[[i for _, i in ranked[:n]]], len(groups)

    @staticmethod
    def _pixels(obs: Observation, x: torch.Tensor) -> torch.Tensor:
        """Flattened rows of model inputs → flattened pixels (normalisation undone), float64."""
        if obs.normalization is None:
            return x
        return obs.normalization.denormalize(x.view(-1, *obs.input_shape)).flatten(1)
