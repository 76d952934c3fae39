"""Fishing — Wen, Geiping, Fowl, Goldblum & Goldstein, "Fishing for User Data in Large-Batch Federated Learning
via Gradient Magnification", ICML 2022, arXiv:2202.00580. See PAPERS.md §9.

The server changes only the classification head's parameters so that one class's samples (class fishing), or
those of one class on one side of a cut on one feature (feature fishing), carry the whole update:

- class fishing on target ``t``: every head row 0 except row ``t`` (all ``class_weight``), every bias
  ``other_bias`` except ``t``'s (kept). Then ``p_t ≈ 0`` for every sample (while ``class_weight · Σ h`` stays far
  below ``other_bias``), so ``∂L/∂h = W_tᵀ (p_t − y_t)``
  vanishes for the other classes' samples and the update is the mean over the batch of class-``t`` samples'
  gradients (exact in float32 at the defaults: the other classes' ``p_t`` underflows to 0);
- feature fishing on ``t`` and feature ``f`` of the head's input ``h``: row ``t`` is ``feature_weight · e_f``
  and its bias puts the cut at ``threshold`` (``b_t = other_bias + log(N − 1) − feature_weight · threshold``).
  A class-``t`` sample with ``h_f`` below the cut then has ``p_t ≈ 0`` and passes its gradient, one above it
  ``p_t ≈ 1`` and passes none; a sample of another class passes its gradient when ``h_f`` is *above* the cut
  (``p_t ≈ 1``, ``y_t = 0``). The cut is sharp within a few ``1 / feature_weight`` of ``threshold``.

In both, the head bias gradient counts what passed (:func:`fished_count`): ``−batch_size · ∂L/∂b_t`` is the
number of class-``t`` samples passing minus that of the other samples passing (for class fishing, the class's
count). As the cut rises this count rises by one at every sample: a class-``t`` sample starts passing, any
other sample stops. The paper binary-searches the cut over rounds in which the clients' data stay fixed until
two cuts differ by one sample, whose gradient is then the difference of the two aggregates
(:func:`fish_one`; ``search_rounds`` > 0 runs it when the server observes, e.g. in an audit). The difference is the
same whatever that sample's class: in the body and in head row
``t`` it is the sample's gradient as if it were of class ``t`` and below the cut. The paper's multipliers
(``class_weight`` 0.5, ``feature_weight`` 300, ``other_bias`` 1000) are the defaults; the paper writes the bias
as ``−300 · v``.

Which feature to cut, when ``search_rounds`` is set and ``feature`` is not (gradleak's choice; the paper leaves it
open): one class-fishing round on the target gives the target class's count and mean head input (row ``t`` of the
head's weight gradient over the count), and the search cuts that mean's largest feature, starting at its value.
At the paper's ``feature_weight`` of 300 the cut can be too soft to isolate one sample on a small model's features
(benchmarks/malicious: never on the zoo MLP; 10⁴ did).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import GradleakError, InputError
from ..models import find_head
from ..normalization import Normalization
from ..observation import Observation
from .base import ServerStrategy, server


@dataclass(frozen=True, kw_only=True)
class FishingConfig:
    """``target``: the class fished; ``feature``: −1 for class fishing, else the head-input feature the cut is on;
    ``threshold``: the cut on that feature; the multipliers are the paper's (breaching's) defaults;
    ``search_rounds``: 0 for one round, else the most rounds the multi-round cut search (:func:`fish_one`) may take
    to isolate one sample (the cut then starts at ``threshold``, or, with ``feature`` −1, is placed as the module
    docstring says)."""

    target: int = 0
    feature: int = -1
    threshold: float = 0.0
    class_weight: float = 0.5
    feature_weight: float = 300.0
    other_bias: float = 1000.0
    search_rounds: int = 0

    def __post_init__(self) -> None:
        if self.search_rounds < 0 or self.search_rounds == 1:
            raise InputError(f"fishing: search_rounds is 0 (one round) or at least 2, got {self.search_rounds}")
        for name in ("threshold", "class_weight", "feature_weight", "other_bias"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"fishing: {name} must be finite, got {getattr(self, name)}")
        if self.feature_weight <= 0 or self.class_weight <= 0:
            raise InputError("fishing: class_weight and feature_weight must be positive")
        if self.feature < -1 or self.target < 0:
            raise InputError(f"fishing: target must be >= 0 and feature >= -1, got {self.target}, {self.feature}")

    @property
    def mode(self) -> str:
        return "class" if self.feature < 0 else "feature"


@server("fishing")
class Fishing(ServerStrategy):
    """Class or feature fishing: the head's parameters make one class's samples (below a cut on one feature)
    carry the update (only weights change, not the architecture).

    Paper: Wen et al. ICML 2022. Needs: a classification head (``nn.Linear`` with bias) whose input has the
    feature fished. Settings: :class:`FishingConfig`. The recovery is the ``fishing`` attack."""

    paper = "Wen et al. ICML 2022, arXiv:2202.00580"
    Config = FishingConfig

    def problems(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
        c = self.config
        try:
            name, head = find_head(model, num_classes)
        except InputError as e:
            return [str(e)]
        problems = []
        if head.bias is None:
            problems.append(f"the head {name} has no bias: the other classes cannot be silenced")
        if c.target >= num_classes:
            problems.append(f"target class {c.target} does not exist ({num_classes} classes)")
        if c.feature >= head.in_features:
            problems.append(f"feature {c.feature} does not exist (the head {name} has {head.in_features} inputs)")
        return problems

    def modify(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalization: Normalization | None,
        generator: torch.Generator,
    ) -> tuple[nn.Module, dict[str, Any]]:
        c = self.config
        sent = copy.deepcopy(model)
        name, head = find_head(sent, num_classes)
        assert head.bias is not None  # problems() refused a head without one
        t = c.target
        with torch.no_grad():
            kept = head.bias[t].item()
            head.weight.zero_()
            head.bias.fill_(c.other_bias)
            if c.mode == "class":
                head.weight[t] = c.class_weight
                head.bias[t] = kept
            else:
                head.weight[t, c.feature] = c.feature_weight
                head.bias[t] = c.other_bias + math.log(num_classes - 1) - c.feature_weight * c.threshold
        return sent, {**self.to_json(), "mode": c.mode, "head": name}

    def observe(self, query: Callable[[ServerStrategy], Observation]) -> Observation:
        """One round, or with ``search_rounds`` the multi-round cut search (module docstring); GradleakError when
        the target class is absent or no cut isolates one sample within ``search_rounds`` rounds."""
        c = self.config
        if not c.search_rounds:
            return query(self)
        used, feature, centre = 0, c.feature, c.threshold
        if feature < 0:
            first = query(Fishing(c, feature=-1, search_rounds=0))
            used, count = 1, fished_count(first)
            if count < 0.5:
                raise GradleakError(f"fishing: no sample of class {c.target} in the aggregate (count {count:.2f})")
            head = str((first.server or {})["head"])
            mean = -first.update[f"{head}.weight"][c.target].double() * first.known_batch_size() / count
            feature, centre = int(mean.argmax()), float(mean.max())
        obs, rounds = fish_one(
            query,
            target=c.target,
            feature=feature,
            centre=centre,
            feature_weight=c.feature_weight,
            other_bias=c.other_bias,
            max_rounds=c.search_rounds - used,
        )
        return replace(
            obs, server={**(obs.server or {}), "rounds": len(rounds) + used, "search_rounds": c.search_rounds}
        )


def fished_count(obs: Observation) -> float:
    """``−batch_size · ∂L/∂b_t`` of a fished update: the class-``t`` samples that passed minus the other samples
    that passed (an integer where every sample is far from the cut)."""
    record = obs.server or {}
    return -float(obs.update[f"{record['head']}.bias"][int(record["target"])]) * obs.known_batch_size()


def fish_one(
    query: Callable[[Fishing], Observation],
    *,
    target: int,
    feature: int,
    centre: float = 0.0,
    feature_weight: float = 300.0,
    other_bias: float = 1000.0,
    max_rounds: int = 60,
    count_tol: float = 0.01,
) -> tuple[Observation, list[tuple[float, float]]]:
    """The paper's multi-round search: an update that carries exactly one sample, and the rounds it took
    (``(cut, fished count)`` each).

    ``query`` sends the model a :class:`Fishing` strategy makes to the same clients (their data fixed) and
    returns the aggregate. The search widens a window around ``centre`` until the count differs across it, then
    halves it, keeping a half across which the count rises, down to a width of ``margin = 30 / feature_weight``
    (the cut's logit moves by 30 across it). Two final cuts ``2 · margin`` either side of the window's middle
    must then differ by one in count (to ``count_tol``, which also says both are far from every sample): the
    returned update is the upper cut's aggregate minus the lower's, its record the upper cut's plus
    ``baseline_threshold`` (the lower cut). Halves that fail are searched in turn; GradleakError after
    ``max_rounds`` queries."""
    rounds: list[tuple[float, float]] = []

    def query_at(cut: float) -> tuple[float, Observation]:
        if len(rounds) >= max_rounds:
            raise GradleakError(f"fishing: no cut isolated one sample in {max_rounds} rounds")
        obs = query(
            Fishing(target=target, feature=feature, threshold=cut, feature_weight=feature_weight, other_bias=other_bias)
        )
        rounds.append((cut, fished_count(obs)))
        return rounds[-1][1], obs

    def count(cut: float) -> float:
        return query_at(cut)[0]

    margin = 30.0 / feature_weight
    half = 1.0
    c_lo, c_hi = count(centre - half), count(centre + half)
    while c_hi - c_lo < 0.5:
        half *= 2
        c_lo, c_hi = count(centre - half), count(centre + half)
    stack = [(centre - half, c_lo, centre + half, c_hi)]
    while stack:
        lo, c_lo, hi, c_hi = stack.pop()
        if hi - lo > margin:
            mid = (lo + hi) / 2
            c_mid = count(mid)
            for part in ((lo, c_lo, mid, c_mid), (mid, c_mid, hi, c_hi)):
                if part[3] - part[1] >= 0.5:
                    stack.append(part)
            continue
        a, b = (lo + hi) / 2 - 2 * margin, (lo + hi) / 2 + 2 * margin
        (c_a, lower), (c_b, upper) = query_at(a), query_at(b)
        if abs(c_b - c_a - 1) < count_tol and abs(c_a - round(c_a)) < count_tol:
            diff = {k: upper.update[k] - lower.update[k] for k in upper.update}
            record = {**(upper.server or {}), "baseline_threshold": a, "rounds": len(rounds)}
            return replace(upper, update=diff, server=record), rounds
    raise GradleakError("fishing: no cut isolated one sample (every window held several samples)")
