"""ICA-seeded SPEAR (``cocktail-spear``): gradleak's own combination of the Cocktail Party Attack and SPEAR, which
is neither paper's method.

SPEAR (Dimitrov et al., NeurIPS 2024, :mod:`.spear`) writes the first layer's update as ``G = L R`` (rank B) with
``∂L/∂Z = L Q`` and ``Xᵀ = Q⁻¹ R``; sample i's direction ``q_i`` is the null direction of B−1 rows of ``L`` where the
ReLU zeroes its column. SPEAR draws those rows at random, so a draw succeeds with probability ≈ 2^−(B−1) and the
cost doubles with every sample. The Cocktail Party Attack (Kariyappa et al., ICML 2023, :mod:`.cocktail`) separates
the batch approximately by ICA. Its estimate ``x̂_i`` ranks the units by pre-activation ``W x̂_i + b``, and the most
negative units are, with high probability, zeros of column i. Here:

1. ICA separates the batch (the ``cocktail`` attack's separation, scaled by the bias gradient).
2. For each estimate, the k units its pre-activations put lowest (k = B+7, 1.5B, 2B, 3B, 4B in turn) give a null
   direction. A close but inexact estimate puts a few active units among them, so the set is first trimmed: the
   rows least consistent with its least-squares null direction are swapped for better ones among the 2k lowest.
   The lowest units of one sample are often zeros of other samples too, which leaves more than one direction free
   (most of all in small batches), so the next-lowest units that raise the rank to B−1 are added. The direction is
   then refined on its own zero set, as SPEAR refines a sampled one, and kept only when every row
   of that zero set agrees with it: a wrong guess is dropped, never kept. Identical zero sets are one direction.
3. The samples not yet found have inputs in a known subspace: their rows of ``Q⁻¹`` are orthogonal to every found
   direction, so their inputs lie in the span of ``N R`` (``N``: a basis of that orthogonal complement). ICA on
   that smaller mixture separates the fewer remaining sources better. Their scale and sign are unknown there:
   of ``scales`` times each sign, the guess whose lowest units come closest to a common null direction is tried
   (every guess, likeliest first, once at most ``draw_below`` samples are left).
   Each pass draws a fresh ICA seed; after a pass that found nothing the ICA contrast and domain change (FastICA's
   three contrasts, on image differences and on pixels, in turn). Passes stop when ``patience`` passes in a row find
   nothing, or after the first pass when neither ICA of the whole batch gave a single direction (the estimates are
   then too far from the inputs: Fashion-MNIST at B=128 in the benchmark). When ICA finds none and at most
   ``draw_below`` samples are left, random combinations of the subspace are tried as well.
4. SPEAR's selection (bias-gradient scale fix, agreement with the ReLU pattern) gives the inputs, with SPEAR's
   per-sample exactness evidence.

If fewer than B directions are found, the result is the ICA estimates, every sample flagged not exact
(``assumptions["exact"]``). Needs what SPEAR needs: a first ``nn.Linear`` with bias followed by a ReLU, a known
batch size, and an update of rank B (FedSGD gradients, secure-aggregation means, FedAvg deltas).
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
from ..common import denormalize
from ..steps import Step, StepCallback, no_progress
from .cocktail import DOMAINS, FUNS, CocktailConfig, separate, unmix
from .spear import DT, SPEAR, Factored, SPEARConfig, factorise, refine

VARIANTS = tuple((f, d) for d in DOMAINS for f in FUNS)  # ICA contrasts tried in turn once passes stall
TRIM_ROUNDS = 3  # least-squares trims of a guessed zero set before SPEAR's refinement
SPAN_RTOL = 0.05  # a unit row (norm 1) adds a dimension when this much of it lies outside the rows chosen so far


@dataclass(frozen=True, kw_only=True)
class CocktailSPEARConfig:
    """``iterations`` and ``fun``: FastICA's for the first ICA (see :class:`~.cocktail.CocktailConfig`);
    ``max_passes``: ICA passes on the remaining samples at most; ``patience``: passes in a row without a new
    direction before it stops; ``scales``: the magnitudes (RMS in the model's normalised input space, both signs)
    screened for a source whose scale is unknown; ``draws``: random combinations tried per pass once ICA stalls with
    at most ``draw_below`` samples left; ``zero_tol`` and ``max_mismatch``: SPEAR's (:class:`~.spear.SPEARConfig`)."""

    iterations: int = 200
    fun: str = "exp"
    max_passes: int = 100
    scales: tuple[float, ...] = (1.0, 0.7, 1.4, 0.5, 2.0)
    draws: int = 256
    draw_below: int = 3
    patience: int = 6
    zero_tol: float = 1e-6
    max_mismatch: float = 0.005

    def __post_init__(self) -> None:
        problems = []
        if min(self.iterations, self.patience) < 1 or min(self.max_passes, self.draws, self.draw_below) < 0:
            problems.append("iterations and patience must be >= 1; max_passes, draws and draw_below >= 0")
        if self.fun not in FUNS:
            problems.append(f"fun must be one of {FUNS}, got {self.fun!r}")
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            problems.append(f"scales must be positive numbers, got {self.scales}")
        if not (self.zero_tol > 0 and 0 <= self.max_mismatch < 1):
            problems.append("zero_tol must be > 0 and max_mismatch in [0, 1)")
        if problems:
            raise InputError("cocktail-spear: bad settings", problems)

    @property
    def ica(self) -> CocktailConfig:
        return CocktailConfig(iterations=self.iterations, fun=self.fun)

    @property
    def spear(self) -> SPEARConfig:
        return SPEARConfig(zero_tol=self.zero_tol, max_mismatch=self.max_mismatch)


class Directions:
    """The sample directions found so far, keyed by their zero sets (one direction per zero set)."""

    def __init__(self, f: Factored, b: int, cfg: SPEARConfig):
        self.f, self.b, self.cfg = f, b, cfg
        self.found: dict[bytes, Tensor] = {}

    def lowest(self, x: Tensor) -> Tensor:
        """The live units ordered by the pre-activation of the guess ``x`` [d], lowest first."""
        return torch.argsort(x @ self.f.w[self.f.live].T + self.f.bias[self.f.live])

    def ranked(self, guesses: Tensor) -> Tensor:
        """``guesses`` [G, d] (one source at several scales and signs), likeliest first: by how close their B+7
        lowest units come to a common null direction (ratio of last to first singular value of their rows)."""
        rows = torch.stack([self.f.lh[self.lowest(x)[: self.b + 7]] for x in guesses])
        s = torch.linalg.svdvals(rows)
        return guesses[torch.argsort(s[:, -1] / s[:, 0])]

    def seed_source(self, source: Tensor, scales: tuple[float, ...], tries: int) -> bool:
        """Try the ``tries`` likeliest of ``source`` [d] at ``scales`` and both signs; True at a new direction."""
        return any(self.seed(x) for x in self.ranked(scaled(source, scales))[:tries])

    def seed(self, x: Tensor) -> bool:
        """Try the guess ``x`` [d] of one input (normalised space): the null direction of the k units its
        pre-activations put lowest (for several k), refined. A guess that is close but not exact puts a few active
        units among them, so each set is first trimmed: the rows least consistent with its least-squares null
        direction are swapped for better ones among the 2k lowest units. True if it found a new direction."""
        order = self.lowest(x)
        for k in (self.b + 7, (3 * self.b) // 2, 2 * self.b, 3 * self.b, 4 * self.b):
            pool = order[: 2 * k]
            rows = pool[:k]
            for _ in range(TRIM_ROUNDS):
                q = torch.linalg.svd(self.f.lh[rows], full_matrices=False)[2][-1]
                rows = pool[torch.argsort((self.f.lh[pool] @ q).abs())[:k]]
            zero = torch.zeros(len(order), dtype=torch.bool)
            zero[rows] = True
            zero[self.spanning(rows, order)] = True
            q = refine(self.f.lh, zero, self.cfg)
            if q is not None:
                key = ((self.f.lh @ q).abs() <= self.cfg.zero_tol).numpy().tobytes()
                new = key not in self.found
                self.found[key] = q
                return new
        return False

    def spanning(self, rows: Tensor, order: Tensor) -> Tensor:
        """Units, taken lowest first from ``order``, whose rows raise the rank of ``rows`` until it is B−1. The
        lowest units of one sample are often zeros of others too (their null space is then larger than one
        direction), most of all in small batches; these units pin the one direction left."""
        basis = torch.linalg.svd(self.f.lh[rows], full_matrices=False)[2]
        basis = basis[: int((torch.linalg.svdvals(self.f.lh[rows]) > SPAN_RTOL).sum())]
        added = []
        for u in order.tolist():
            if len(basis) >= self.b - 1:
                break
            v = self.f.lh[u] - basis.T @ (basis @ self.f.lh[u])
            if v.norm() > SPAN_RTOL:
                basis = torch.cat([basis, (v / v.norm())[None]])
                added.append(u)
        return torch.tensor(added, dtype=torch.long)

    def remainder(self) -> Tensor:
        """``[B − K, d]``: mixtures of exactly the inputs of the samples not yet found (``N R``)."""
        if not self.found:
            return self.f.r
        q = self.pool
        vh = torch.linalg.svd(q.T)[2]
        return vh[q.shape[1] :] @ self.f.r

    @property
    def pool(self) -> Tensor:
        return torch.stack(list(self.found.values()), dim=1)


def scaled(row: Tensor, scales: tuple[float, ...]) -> Tensor:
    """``[2·len(scales), d]``: the row at RMS 1 times each scale, with both signs."""
    unit = row * math.sqrt(len(row)) / row.norm().clamp_min(1e-300)
    return torch.stack([s * sign * unit for s in scales for sign in (1.0, -1.0)])


@attack("cocktail-spear")
class CocktailSPEAR(Attack):
    """SPEAR's exact recovery with ICA estimates, instead of random draws, proposing each sample's ReLU zeros:
    gradleak's own combination of Kariyappa et al. (ICML 2023) and Dimitrov et al. (NeurIPS 2024). Exact where it
    finds all B directions, with SPEAR's per-sample evidence; the ICA estimates, flagged not exact, where it does
    not. Needs SPEAR's conditions. Settings: :class:`CocktailSPEARConfig`; the procedure is in the module docstring."""

    paper = "gradleak's combination of Kariyappa et al. ICML 2023 and Dimitrov et al. NeurIPS 2024 (arXiv:2403.03945)"
    Config = CocktailSPEARConfig

    def problems(self, obs: Observation) -> list[str]:
        problems = SPEAR(self.config.spear).problems(obs)
        if obs.batch_size == 1:
            problems.append("one sample needs no separation: use analytic_fc or spear (exact for B=1)")
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
        b = obs.known_batch_size()
        name, f = factorise(obs, b, self.name)
        dirs = Directions(f, b, cfg.spear)

        def seed_of() -> int:
            return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

        estimates, ica = separate(obs, b, cfg.ica, seed_of())
        x0 = torch.from_numpy(estimates).to(DT)
        for x in x0:
            dirs.seed(x)
        per_pass = [len(dirs.found)]
        stalled = 0  # passes on the remainder in a row that found nothing
        on_step(Step(0, cfg.max_passes, float(b - len(dirs.found)), "directions"))
        for p in range(1, cfg.max_passes + 1):
            left = b - len(dirs.found)
            if left <= 0:
                break
            y = dirs.remainder()
            if left == 1:
                sources = y
            else:
                fun, domain = VARIANTS[stalled % len(VARIANTS)] if stalled else (cfg.fun, "gradient")
                contrast = replace(cfg.ica, fun=fun, domain=domain)
                unmixing, _ = unmix(y.numpy(), tuple(obs.input_shape), left, contrast, seed_of())
                sources = torch.from_numpy(unmixing) @ y
            tries = 2 * len(cfg.scales) if left <= cfg.draw_below else 1
            found = sum(dirs.seed_source(x, cfg.scales, tries) for x in sources)
            if not found and left <= cfg.draw_below and cfg.draws:
                mix = torch.randn(cfg.draws, left, generator=generator, dtype=DT)
                found = sum(dirs.seed_source(x, cfg.scales, 1) for x in mix @ y)
            per_pass.append(found)
            on_step(Step(p, cfg.max_passes, float(b - len(dirs.found)), "directions"))
            stalled = 0 if found else stalled + 1
            if stalled >= cfg.patience or not dirs.found:
                break
        sel = f.select(dirs.pool, cfg.zero_tol) if len(dirs.found) >= b else None
        assumptions = {
            "layer": name,
            "batch_size": b,
            "protocol": obs.protocol.name,
            "directions_found": len(dirs.found),
            "directions_per_pass": per_pass,
            "ica_iterations": ica["iterations"],
        }
        if sel is None:
            x = x0
            assumptions |= {"exact": [False] * b, "exact_count": 0, "fallback": "ICA estimates (not all directions)"}
        else:
            x = sel.x
            assumptions |= f.evidence(sel, cfg.spear)
        images = denormalize(obs, x.to(obs.dtype).to(obs.device).view(b, *obs.input_shape))
        return AttackResult(
            name=self.name,
            images=images,
            iterations=len(per_pass),
            seconds=time.perf_counter() - t0,
            final_loss=float(sel.mismatch.max()) if sel is not None else 1.0,
            labels=None if labels is None else list(labels.labels),
            assumptions=assumptions,
            config=self.config_json(),
        )
