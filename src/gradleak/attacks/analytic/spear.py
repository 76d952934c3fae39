"""SPEAR: exact recovery of a whole batch through a fully connected layer followed by a ReLU — Dimitrov,
Baader, Müller & Vechev, "SPEAR: Exact Gradient Inversion of Batches in Federated Learning", NeurIPS 2024,
arXiv:2403.03945. See PAPERS.md §5.

For ``Z = W X + b 1ᵀ`` (``X``: the B inputs as columns) the weight gradient ``G = (∂L/∂Z) Xᵀ`` has rank B.
A truncated SVD ``G = L R`` leaves one unknown invertible ``Q`` (B×B) with ``∂L/∂Z = L Q`` and
``Xᵀ = Q⁻¹ R``. The ReLU zeroes ``∂L/∂Z`` wherever ``Z ≤ 0`` — about half of each column — so B−1 rows
of ``L`` drawn at random from the zeros of column i have ``q_i`` as their null direction. Steps:

1. sample B−1 rows of ``L`` (unit-normalised; rows where the whole gradient is zero are skipped: no
   sample activates that unit), take the null direction ``q``;
2. keep ``q`` if ``L q`` vanishes on at least ``min_zero_fraction`` of the rows (a first test on
   ``screen_rows`` rows, then all rows); refine it as the null direction of *all* its zero rows, and drop
   it if those rows leave two directions free (the drawn rows were zeros of two columns at once: a
   mixture); identical zero sets are one candidate;
3. pick B candidates: the sparsest independent ones first, then swap in other candidates while that
   lowers the disagreement between the zeros of ``L Q`` and the ReLU pattern ``W X + b ≤ 0`` of the
   inputs they imply (the paper's greedy selection by sparsity matching);
4. fix each column's scale and sign with the bias gradient, ``∂L/∂b = L Q̄ s``, and read ``Xᵀ = Q⁻¹ R``.

Sampling stops as soon as B candidates agree with the ReLU pattern (at most ``max_mismatch`` of the
units); else once as many draws again as found the last candidate bring no new one, or after
``max_samples`` draws. A sample succeeds with probability about 2^−(B−1) per column, so the cost doubles
with each extra sample in the batch (the paper: exact ImageNet batches up to B ≈ 25).

**Evidence without ground truth** (``assumptions``): per sample the zero fraction of its ``∂L/∂Z``
column and its ``pattern_mismatch`` (fraction of units where that column is zero while the recovered
input activates the unit, or, for FedSGD, nonzero while the input does not); ``exact`` = mismatch ≤
``max_mismatch``; ``gradient_residual`` = ‖(L Q ⊙ 1[Z>0]) X − G‖/‖G‖ (the gradient rebuilt from the
recovered inputs and the ReLU pattern they imply; FedSGD only), ``bias_residual`` and ``rank_residual``
(what of ``G`` lies outside rank B).

**FedAvg.** The first layer's input is the raw batch at every local step, so its delta is still
``ΔW = D Xᵀ``, ``Δb = D 1`` with ``D`` the summed (−η-scaled) ``∂L/∂Z`` of the steps: rank B and the same
algebra, with ``D`` zero where a unit stayed inactive at every step that used the sample. The attack
therefore runs on FedAvg deltas as on gradients and the recovery stays exact; only the check changes:
units that became active during the local steps are nonzero in ``D`` although ``W₀ X + b₀ ≤ 0`` (the
server knows only the initial parameters), so for deltas only the other disagreement (zero in ``D``
where the recovered input activates the unit at θ₀) counts. Samples that first enter a local mini-batch
at a later step can violate even that; such a sample is reported not exact rather than hidden.

Deviations from the paper: the candidate refinement over the whole zero set, the rank test that drops
mixtures, and the early stop on agreement are ours (the paper samples a fixed budget of 10⁴-submatrix
batches on a GPU and runs a two-stage greedy); the attack targets the model's first layer only, so it
returns images (a later layer would give features). Example::

    result = SPEAR().run(obs, generator=torch.Generator().manual_seed(0))
    result.assumptions["exact"]   # per sample, from the ReLU-pattern agreement
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import UnsupportedError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import denormalize
from ..steps import Step, StepCallback, no_progress
from .fc import first_linear
from .linalg import gram_svd

DT = torch.float64


@dataclass(frozen=True, kw_only=True)
class SPEARConfig:
    """``max_samples`` drawn submatrices at most (``chunk`` at a time); a candidate must vanish on
    ``min_zero_fraction`` of the active units (the paper's τ; a ReLU zeroes about half, a wrong direction
    only the B−1 drawn rows); ``(L q)_j`` counts as zero when ``|cos(L_j, q)| ≤ zero_tol`` (float32 gradients:
    true zeros ≈ 1e-8, nonzeros rarely below 1e-5), ``screen_tol`` for the unrefined draw; the update's
    rank is B when singular value B is above ``rank_rtol`` and value B+1 below ``noise_rtol`` of the
    largest; a sample is exact when at most ``max_mismatch`` of the units disagree with its ReLU pattern.
    Sampling stops at the first selection with every sample exact, else once as many draws again as found
    the last candidate bring no new one (the best selection is returned, its samples flagged not exact)."""

    max_samples: int = 20_000_000
    chunk: int = 4096
    min_zero_fraction: float = 0.3
    screen_rows: int = 96
    screen_tol: float = 1e-4
    zero_tol: float = 1e-6
    rank_rtol: float = 1e-5
    noise_rtol: float = 1e-4
    max_mismatch: float = 0.005


@dataclass
class Selection:
    """B chosen directions, the inputs they imply and the per-sample evidence."""

    q: Tensor  # [B, B] columns scaled: ∂L/∂Z = L q
    x: Tensor  # [B, n]
    mismatch: Tensor  # [B] fraction of units disagreeing with the ReLU pattern
    zero_fraction: Tensor  # [B]
    bias_residual: float


@dataclass
class Factored:
    """The first layer's update ``g ≈ L R`` (rank B) with what SPEAR's steps read: the layer's parameters, the
    bias update, the units some sample activates (``live``) and their unit-normalised rows ``lh`` of ``L``."""

    g: Tensor
    gb: Tensor
    w: Tensor
    bias: Tensor
    l: Tensor
    r: Tensor
    live: Tensor
    lh: Tensor
    two_sided: bool  # FedSGD: the zeros of ∂L/∂Z are exactly the inactive units; a FedAvg delta: a subset

    def zeros(self, dirs: Tensor, zero_tol: float) -> Tensor:
        """``[m, K]``: where ``L dirs`` vanishes (units without gradient count as zero)."""
        zeros = torch.ones(len(self.live), dirs.shape[1], dtype=torch.bool)
        zeros[self.live] = (self.lh @ dirs).abs() <= zero_tol
        return zeros

    def select(self, dirs: Tensor, zero_tol: float) -> Selection | None:
        """SPEAR's greedy selection of B of the candidate columns ``dirs``."""
        return select(dirs, self.zeros(dirs, zero_tol), self.l, self.r, self.gb, self.w, self.bias, self.two_sided)

    def evidence(self, sel: Selection, cfg: SPEARConfig) -> dict[str, Any]:
        """Per-sample exactness and the residuals of a selection (the module docstring's evidence)."""
        dz = (self.l @ sel.q) * (sel.x @ self.w.T + self.bias > 0).T  # ∂L/∂Z, ReLU pattern of the recovered inputs
        exact = [bool(v <= cfg.max_mismatch) for v in sel.mismatch]
        return {
            "exact": exact,
            "exact_count": sum(exact),
            "pattern_mismatch": sel.mismatch.tolist(),
            "zero_fraction": sel.zero_fraction.tolist(),
            "gradient_residual": float((dz @ sel.x - self.g).norm() / self.g.norm()) if self.two_sided else None,
            "bias_residual": sel.bias_residual,
            "rank_residual": float((self.g - self.l @ self.r).norm() / self.g.norm()),
            "mismatch_check": "two-sided (FedSGD)" if self.two_sided else "zero where active only (FedAvg delta)",
        }


def factorise(obs: Observation, b: int, attack_name: str) -> tuple[str, Factored]:
    """The first layer's name and its factored update (the attack's ``check`` has passed)."""
    name, module, _ = layer_of(obs)
    assert name is not None and module is not None and module.bias is not None  # check() passed
    g, gb = obs.update[f"{name}.weight"].to(DT).cpu(), obs.update[f"{name}.bias"].to(DT).cpu()
    l, r = factor(g, b)
    live = g.abs().amax(1) > 0  # units some sample activates
    if int(live.sum()) <= b:
        raise UnsupportedError(attack_name, [f"only {int(live.sum())} units carry gradient; need over B={b}"])
    lh = l[live] / l[live].norm(dim=1, keepdim=True)
    w, bias = module.weight.detach().to(DT).cpu(), module.bias.detach().to(DT).cpu()
    return name, Factored(g, gb, w, bias, l, r, live, lh, two_sided=obs.kind == "gradient")


def layer_of(obs: Observation) -> tuple[str | None, nn.Linear | None, list[str]]:
    """(module path, module, problems) of the first layer, which must be an nn.Linear with bias followed
    by a ReLU."""
    name, after, problems = first_linear(obs)
    if name is None:
        return None, None, problems
    if after != "relu":
        problems = [*problems, f"the first layer {name} is followed by {after}, not a ReLU: SPEAR needs its zeros"]
    module = dict(obs.model.named_modules())[name]
    assert isinstance(module, nn.Linear)  # first_linear found an nn.Linear
    return name, module, problems


def spectrum(g: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values (descending) of ``g`` [m, n] and its left (m ≤ n) or right singular vectors, from the
    eigendecomposition of the smaller Gram matrix: several times faster than an SVD of a wide layer, and
    accurate to ~1e-8 of the largest singular value, far below the thresholds used here."""
    return gram_svd(g.T if g.shape[0] <= g.shape[1] else g)


def factor(g: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """``(L, R)`` with ``g ≈ L R``, ``L`` [m, b], ``R`` [b, n] with orthonormal rows."""
    s, vec = spectrum(g)
    if g.shape[0] <= g.shape[1]:
        u = vec[:, :b]
        return u * s[:b], (u.T @ g) / s[:b, None]
    v = vec[:, :b]
    return g @ v, v.T


def rank_problems(g: Tensor, b: int, cfg: SPEARConfig) -> list[str]:
    """Why the weight update ``g`` (m×n) does not have numerical rank exactly ``b``."""
    m, n = g.shape
    if b >= m or b > n:
        return [
            f"B={b} needs a layer wider than the batch: the first layer has m={m} units and n={n} inputs "
            f"(SPEAR needs B < m and B ≤ n, and many more units than B to sample from)"
        ]
    s = spectrum(g.to(DT))[0]
    if s[0] == 0:
        return ["the first layer's weight update is zero"]
    problems = []
    if s[b - 1] <= cfg.rank_rtol * s[0]:
        r = int((s > cfg.rank_rtol * s[0]).sum())
        problems.append(
            f"the first layer's update has numerical rank {r} < B={b} (singular value {b} is {s[b - 1] / s[0]:.1e} "
            "of the largest): duplicate samples or a sample without gradient; the batch cannot be separated"
        )
    if b < min(m, n) and s[b] > cfg.noise_rtol * s[0]:
        problems.append(
            f"the first layer's update has rank above B={b} (singular value {b + 1} is {s[b] / s[0]:.1e} of the "
            "largest): the batch size is wrong, or noise (a defense) hides the rank-B structure"
        )
    return problems


def null_directions(rows: Tensor) -> Tensor:
    """Unit null directions of a batch of (B−1)×B matrices ``rows`` [N, B−1, B] ([N, B]; NaN where singular)."""
    n, k, b = rows.shape
    if k == 0:
        return torch.ones(n, 1, dtype=rows.dtype)
    y = torch.linalg.solve_ex(rows[:, :, :-1], -rows[:, :, -1:])[0].squeeze(-1)
    q = torch.cat([y, torch.ones(n, 1, dtype=rows.dtype)], dim=1)
    return q / q.norm(dim=1, keepdim=True)


def refine(lh: Tensor, zero: Tensor, cfg: SPEARConfig) -> Tensor | None:
    """The null direction of all rows of ``lh`` in ``zero``, refined on its own zeros; ``None`` if those rows
    pin no single direction: they leave two free (the zeros of two columns at once), or one row alone fixes a
    direction (a leverage of 1: B−2 shared zeros of two columns plus one row that the mixture of those two
    columns happens to cancel — frequent when samples' ReLU patterns are correlated)."""
    b = lh.shape[1]
    q = lh.new_zeros(b)
    for _ in range(3):
        u, s, vh = torch.linalg.svd(lh[zero], full_matrices=False)
        if len(s) < b or s[b - 2] <= 1e-3 * s[0]:
            return None
        q = vh[-1]
        zero = (lh @ q).abs() <= cfg.zero_tol
    if float(u[:, : b - 1].pow(2).sum(1).max()) > 0.99:
        return None
    return q * torch.sign(q[q.abs().argmax()])


class Sampler:
    """Draws submatrices of ``lh`` [m, B] (unit rows; the active units only) and collects candidates."""

    def __init__(self, lh: Tensor, cfg: SPEARConfig, generator: torch.Generator):
        self.lh, self.cfg, self.gen = lh, cfg, generator
        m, b = lh.shape
        self.b = b
        self.screen = torch.randperm(m, generator=generator)[: min(cfg.screen_rows, m)]
        self.need = cfg.min_zero_fraction * m
        self.pool: dict[bytes, Tensor] = {}  # zero set → refined direction
        self.drawn = 0

    def draw(self) -> bool:
        """One chunk of samples; True if the pool grew."""
        m, b, cfg = self.lh.shape[0], self.b, self.cfg
        n = min(cfg.chunk, cfg.max_samples - self.drawn)
        self.drawn += n
        idx = torch.randint(m, (n, b - 1), generator=self.gen)
        q = null_directions(self.lh[idx])
        ok = torch.isfinite(q).all(1)
        screen = (self.lh[self.screen] @ q[ok].T).abs() <= cfg.screen_tol
        # half the fraction on the screen: a column's zeros may fall short of it there by chance
        keep = torch.nonzero(ok).flatten()[screen.sum(0) >= cfg.min_zero_fraction / 2 * len(self.screen)]
        known = torch.stack(list(self.pool.values())) if self.pool else self.lh.new_zeros(0, b)
        grew = False
        for k in keep.tolist():
            if (known @ q[k]).abs().gt(1 - 1e-6).any():  # a direction found before
                continue
            zero = (self.lh @ q[k]).abs() <= cfg.screen_tol
            if zero.sum() < self.need:
                continue
            r = refine(self.lh, zero, cfg)
            if r is None:
                continue
            zero = (self.lh @ r).abs() <= cfg.zero_tol
            key = zero.numpy().tobytes()
            if key not in self.pool and zero.sum() >= self.need:
                self.pool[key] = r
                known = torch.cat([known, r[None]])
                grew = True
        return grew

    @property
    def exhausted(self) -> bool:
        return self.drawn >= self.cfg.max_samples


def evaluate(
    dirs: Tensor, l: Tensor, r: Tensor, gb: Tensor, w: Tensor, bias: Tensor, zero: Tensor, two_sided: bool
) -> Selection | None:
    """The inputs implied by unit directions ``dirs`` [B, B] (columns) and their agreement with the ReLU;
    ``None`` if they are dependent or a scale vanishes. ``zero`` [m, B]: where ``L dirs`` vanishes."""
    ld = l @ dirs
    s = torch.linalg.lstsq(ld, gb[:, None]).solution.flatten()
    if not torch.isfinite(s).all() or (s.abs() <= 1e-12 * s.abs().max()).any():
        return None
    q = dirs * s
    try:
        xt = torch.linalg.solve(q, r)  # Xᵀ = Q⁻¹ R, rows = samples
    except RuntimeError:
        return None
    active = (xt @ w.T + bias).T > 0  # [m, B]
    bad = zero & active
    if two_sided:
        bad |= ~zero & ~active
    return Selection(
        q=q,
        x=xt,
        mismatch=bad.to(DT).mean(0),
        zero_fraction=zero.to(DT).mean(0),
        bias_residual=float((ld @ s - gb).norm() / gb.norm()),
    )


def select(
    pool: Tensor, zeros: Tensor, l: Tensor, r: Tensor, gb: Tensor, w: Tensor, bias: Tensor, two_sided: bool
) -> Selection | None:
    """Greedy choice of B of the candidate columns ``pool`` [B, K] (``zeros`` [m, K]: where ``L pool``
    vanishes): the sparsest independent ones, then single swaps while the total ReLU-pattern mismatch falls."""
    b, k = pool.shape
    order = torch.argsort(zeros.sum(0), descending=True, stable=True).tolist()
    chosen: list[int] = []
    for c in order:
        if torch.linalg.svdvals(pool[:, chosen + [c]])[-1] > 1e-6:
            chosen.append(c)
        if len(chosen) == b:
            break
    if len(chosen) < b:
        return None

    def score(idx: list[int]) -> tuple[float, Selection | None]:
        sel = evaluate(pool[:, idx], l, r, gb, w, bias, zeros[:, idx], two_sided)
        return (float("inf"), None) if sel is None else (float(sel.mismatch.sum()), sel)

    best, sel = score(chosen)
    improved = True
    while improved and k > b and best > 0:
        improved = False
        for slot in range(b):
            for c in range(k):
                if c in chosen:
                    continue
                trial = chosen[:slot] + [c] + chosen[slot + 1 :]
                t, s = score(trial)
                if t < best - 1e-12:
                    best, sel, chosen, improved = t, s, trial, True
    return sel


@attack("spear")
class SPEAR(Attack):
    """Exact recovery of a whole batch through a first ``nn.Linear`` (with bias) followed by a ReLU, from the
    low rank of its weight gradient and the zeros the ReLU puts in ``∂L/∂Z``.

    Paper: Dimitrov et al., NeurIPS 2024. Needs: the batch size, B < m and B ≤ n, an update of numerical
    rank exactly B (FedSGD gradient or FedAvg delta). Per-sample exactness evidence in ``assumptions``.
    Settings: :class:`SPEARConfig`; all randomness from the ``generator`` passed to :meth:`run`."""

    paper = "Dimitrov, Baader, Müller & Vechev, NeurIPS 2024 (arXiv:2403.03945)"
    Config = SPEARConfig

    def problems(self, obs: Observation) -> list[str]:
        name, module, problems = layer_of(obs)
        if obs.batch_size is None:
            problems.append("the batch size is unknown to the server (SPEAR separates exactly B samples)")
        elif name is not None and module is not None and module.bias is not None:
            problems += rank_problems(obs.update[f"{name}.weight"], obs.batch_size, self.config)
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
        sampler = Sampler(f.lh, cfg, generator)
        if b == 1:
            sampler.pool[b""] = torch.ones(1, dtype=DT)

        def choose() -> Selection | None:
            return f.select(torch.stack(list(sampler.pool.values()), dim=1), cfg.zero_tol)

        sel = choose() if b == 1 else None
        grown = 0  # draws when the pool last grew
        while b > 1 and not sampler.exhausted:
            if sampler.draw():
                grown = sampler.drawn
                if len(sampler.pool) >= b:
                    sel = choose() or sel
            on_step(Step(sampler.drawn, cfg.max_samples, len(sampler.pool), "sampling"))
            if sel is not None and (float(sel.mismatch.max()) <= cfg.max_mismatch or sampler.drawn >= 2 * grown):
                break
        if sel is None:
            raise UnsupportedError(
                self.name,
                [
                    f"found {len(sampler.pool)} of the B={b} directions in {sampler.drawn} sampled submatrices "
                    f"(max_samples={cfg.max_samples}); a sample hits a direction with probability ≈ 2^-(B-1): "
                    "raise max_samples, or the ReLU zeros are too few (min_zero_fraction)"
                ],
            )
        x = sel.x.to(obs.dtype)
        images = denormalize(obs, x.to(obs.device).view(b, *obs.input_shape))
        return AttackResult(
            name=self.name,
            images=images,
            iterations=sampler.drawn,
            seconds=time.perf_counter() - t0,
            final_loss=float(sel.mismatch.max()),
            labels=None if labels is None else list(labels.labels),
            assumptions={
                "layer": name,
                "batch_size": b,
                "protocol": obs.protocol.name,
                **f.evidence(sel, cfg),
                "candidates": len(sampler.pool),
                "samples_drawn": sampler.drawn,
            },
            config=self.config_json(),
        )
