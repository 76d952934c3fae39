"""Tensor-decomposition reconstruction — Wang, Lee & Lei, "Reconstructing Training Data from Model
Gradient, Provably", AISTATS 2023, arXiv:2212.03714.

One gradient of a two-layer network ``f_k(x) = Σ_j A_kj σ(w_jᵀx)`` at random Gaussian parameters
(``w_j = s·w̃_j``, ``w̃_j ~ N(0, I_d)``) identifies the whole batch. With ``r_ik = ∂L/∂f_k(x_i)`` (batch
mean included), ``τ_i = s‖x_i‖`` and ``κ_p(τ) = E[σ(τz) He_p(z)]`` (Stein's lemma, PAPERS.md §3):

- second layer: ``(1/m) Σ_j ∇A_kj · He_p(w̃_j) → Σ_i r_ik κ_p(τ_i) x̂_i^{⊗p}``;
- first layer: ``(s/m) Σ_j (A_kj/E[A²]) ∇w_j ⊗ He_{p−1}(w̃_j)`` has the same limit.

p = 3 for activations with an odd part (tanh, sigmoid); p = 4 where ``κ_3 = 0`` (ReLU, softplus).
Steps (our working version — the paper's own decomposition routine and width rate are not available
to us; everything in float64, all randomness from the caller's seeded generator):
(1) project on the top-B right singular vectors of ``∇W`` (its rows lie in span{x_i}), signs canonical;
(2) both estimators over 16 chunks of the hidden units, combined by inverse variance — the chunk
spread also gives the estimate's relative noise; (3) Jennrich's simultaneous diagonalisation of
random slice pairs, whitened by the symmetric eigendecomposition of one slice (no pseudo-inverse
cut-off), the best few by fit refined by least-squares CP (L-BFGS), the best refined one kept;
directions' signs canonical (largest entry positive) and ordered by coefficient size;
(4) per sample, the norm from the first-layer gradient: with the directions known, ``∇W``'s column
for sample i is ``ρ_i (Aᵀ r_i) ⊙ σ'(ρ_i W x̂_i) / B`` — m equations, linear in ``r_i`` for fixed ``ρ_i``,
so ``ρ_i`` is a 1-D least-squares problem (deviation: the paper reads ``r_i`` off the tensor
coefficients and does not need the norm under its normalisation); the sign and label are those for
which ``softmax(f(x_i)) − e_y`` matches the recovered ``r_i``;
(5) deviation, ``polish_steps`` (default 100; 0 turns it off): gradient matching (L-BFGS, float64) from that
estimate, kept only where it lowers the gradient distance — the gradient is exact where the tensor is a
finite-width estimate, so from a start in the basin it removes the estimate's noise. ``x_tensor`` and
``assumptions["gradient_distance_tensor"]`` keep the paper's estimate. Where the rank-B fit leaves far more
than the estimated noise (``max_fit_ratio``) the decomposition failed and the attack refuses rather than
return wrong samples.

Symmetry: with two classes, an odd σ and no head bias, ``(x, y)`` and ``(−x, 1 − y)`` give exactly the
same gradient (:func:`has_flip_symmetry`); the canonical direction is returned and
:func:`score_query` scores modulo that flip.

Conditions checked: FedSGD gradient, known batch size ``B ≤ d`` and ``B ≤ m``, exactly
Linear(no bias) → element-wise σ → Linear, ``κ_p ≠ 0``, first-layer weights Gaussian (kurtosis ≈ 3,
mean ≈ 0), head weights centred, and at run time the estimated relative noise of the tensor below
``max_noise`` (else the width is too small, and the width that would suffice is reported).
:func:`single_query` simulates the paper's setting. Example::

    obs, truth = single_query(d=20, batch_size=5, width=20000, seed=0)
    result = TensorAttack().run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError, UnsupportedError
from ...labels import LabelResult
from ...observation import Observation
from ...protocols import FedSGD, client_update, cross_entropy
from ..base import Attack, AttackResult, attack
from ..common import denormalize, gradient_problems
from ..steps import StepCallback, no_progress
from .trace import classify_node, symbolic_trace

DT = torch.float64
#: the polish counts as converged (the batch's gradient reproduced) below this squared relative distance
CONVERGED = 1e-6


# ---------------------------------------------------------------------------------------------------
# Activation moments
# ---------------------------------------------------------------------------------------------------
def _sigma(what: str, slope: float | None):
    return {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "softplus": F.softplus,
        "leaky_relu": lambda z: F.leaky_relu(z, slope or 0.01),
        "identity": lambda z: z,
    }.get(what)


def _hermite(p: int, z: Tensor) -> Tensor:
    return {2: z**2 - 1, 3: z**3 - 3 * z, 4: z**4 - 6 * z**2 + 3}[p]


def kappa(sigma, p: int, tau: Tensor) -> Tensor:
    """``κ_p(τ) = E_z[σ(τz) He_p(z)]``, z ~ N(0, 1), by quadrature on a fine grid (robust for ReLU)."""
    z = torch.linspace(-10, 10, 4001, dtype=DT)
    w = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) * (z[1] - z[0])
    tau = torch.as_tensor(tau, dtype=DT).reshape(-1, 1)
    return (sigma(tau * z) * _hermite(p, z) * w).sum(-1)


# ---------------------------------------------------------------------------------------------------
# The scenario: one gradient query at random parameters
# ---------------------------------------------------------------------------------------------------
@dataclass
class QueryTruth:
    """The client's batch in model space ([B, d] and input shape) and its labels — for scoring only."""

    x: Tensor
    labels: Tensor
    images: Tensor | None = None


def single_query(
    *,
    d: int = 20,
    batch_size: int = 5,
    width: int = 20000,
    num_classes: int = 10,
    activation: str = "tanh",
    seed: int = 0,
    x: Tensor | None = None,
    labels: Tensor | None = None,
    gaussian: bool = True,
) -> tuple[Observation, QueryTruth]:
    """The paper's setting: a two-layer net at random Gaussian parameters (``W ~ N(0, 1/d)``,
    ``A ~ N(0, 1/width)``, :class:`~gradleak.models.rgap.TwoLayerNet`) answers one FedSGD query on a
    batch. Without ``x`` the inputs are standard normal vectors (``‖x‖ ≈ √d``, so ``τ ≈ 1``) and the
    labels uniform; ``x`` may be any [B, d] (e.g. standardised images, flattened)."""
    from ...models.rgap import TwoLayerNet

    g = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(batch_size, d, generator=g)
    if labels is None:
        labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = TwoLayerNet(num_classes, (d,), width=width, activation=activation, gaussian=gaussian)
    update = client_update(model, FedSGD(), x.float(), labels)
    obs = Observation(
        model=model,
        update=update,
        protocol=FedSGD(),
        num_classes=num_classes,
        input_shape=(d,),
        batch_size=int(x.shape[0]),
    )
    return obs, QueryTruth(x.double(), labels)


def match_cosines(rec: Tensor, true: Tensor) -> tuple[list[float], list[int]]:
    """Signed cosine of each true sample with its best-matching reconstruction (assignment on |cos|)."""
    from scipy.optimize import linear_sum_assignment

    a = F.normalize(rec.double().flatten(1), dim=1)
    b = F.normalize(true.double().flatten(1), dim=1)
    cos = b @ a.T
    rows, cols = linear_sum_assignment(-cos.abs().numpy())
    return [float(cos[r, c]) for r, c in zip(rows, cols)], [int(c) for c in cols]


# ---------------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TensorConfig:
    """``order``: 0 = 3 if κ_3 ≠ 0 else 4; ``estimator``: "both" (inverse-variance combination),
    "first" or "second" layer; ``trials`` seeded whitened Jennrich pencils, the ``refined`` best of them
    refined by ``refine_steps`` of L-BFGS on the CP fit; ``max_noise``: refuse when the tensor's
    estimated relative noise exceeds it; ``max_fit_ratio``: refuse when the rank-B CP fit leaves a residual
    above this multiple of that noise (the decomposition did not find B components: measured 0.6–0.97 where it
    did, 1.9–2.4 where it failed, ``benchmarks/analytic``); ``tau_range``: the range of ``τ = s‖x‖`` searched
    for each norm; ``polish_steps``: L-BFGS steps of gradient matching from the tensor estimate (0 = the
    paper's pipeline only; a deviation, see the module docstring)."""

    order: int = 0
    estimator: str = "both"
    chunks: int = 16
    trials: int = 20
    refine_steps: int = 100
    refined: int = 4
    max_noise: float = 1.0
    max_fit_ratio: float = 1.5
    tau_range: tuple[float, float] = (0.02, 30.0)
    polish_steps: int = 100


@dataclass
class TensorReconstruction:
    x: Tensor  # [B, d] model-space inputs (scale and sign resolved; polished if polish_steps > 0)
    x_tensor: Tensor  # [B, d] the tensor estimate before the polish
    directions: Tensor  # [B, d] unit directions (sign resolved)
    labels: list[int]
    coefficients: Tensor  # [B, K] recovered r_ik·κ_p(τ_i)
    order: int
    noise: float
    fit_residual: float
    scale_residuals: list[float]  # relative residual of each sample's first-layer gradient fit
    info: dict[str, Any] = field(default_factory=dict)


def _two_layer(obs: Observation) -> tuple[nn.Linear | None, str | None, Any, nn.Linear | None, list[str]]:
    try:
        gm = symbolic_trace(obs.model)
    except InputError as e:
        return None, None, None, None, [str(e)]
    node = next(n for n in gm.graph.nodes if n.op == "placeholder")
    seq = []
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, None, None, None, ["the model is not a plain chain (it branches)"]
        node = users[0]
        if node.op == "output":
            break
        op = classify_node(gm, node)
        if op.kind != "reshape":
            seq.append(op)
    kinds = [o.kind for o in seq]
    shape_ok = (
        len(seq) == 3
        and kinds[0] == "affine"
        and kinds[2] == "affine"
        and isinstance(seq[0].module, nn.Linear)
        and isinstance(seq[2].module, nn.Linear)
        and kinds[1] in ("invertible", "relu")
    )
    if not shape_ok:
        return (
            None,
            None,
            None,
            None,
            [
                "the model must be exactly Linear → element-wise activation → Linear "
                f"(a two-layer network); found {[o.what for o in seq]}"
            ],
        )
    hidden, act, head = seq[0].module, seq[1], seq[2].module
    assert isinstance(hidden, nn.Linear) and isinstance(head, nn.Linear)  # shape_ok
    sig = _sigma(act.what if act.what != "ReLU" else "relu", act.slope)
    problems = []
    if sig is None:
        problems.append(f"activation {act.what} has no known moments")
    if hidden.bias is not None:
        problems.append(f"the first layer {seq[0].name} has a bias; Stein's identity needs σ(wᵀx) without one")
    return (
        hidden,
        seq[0].name,
        sig,
        head,
        problems + ([] if seq[2].name == obs.head else [f"the last layer is not the head {obs.head!r}"]),
    )


def _order(sig, requested: int) -> int:
    if requested:
        return requested
    return 3 if abs(float(kappa(sig, 3, torch.tensor(1.0)))) > 1e-4 else 4


def tensor_problems(obs: Observation, cfg: TensorConfig) -> list[str]:
    problems = gradient_problems(obs)
    hidden, _, sig, head, p = _two_layer(obs)
    problems += p
    if hidden is None or head is None or sig is None:
        return problems
    m, d = hidden.weight.shape
    b = obs.batch_size
    if b is None:
        problems.append("the batch size is unknown (the decomposition needs the number of components B)")
    else:
        if b > d:
            problems.append(
                f"B={b} samples exceed the input dimension d={d}: the inputs cannot be linearly "
                "independent, so the tensor decomposition is not unique (needs B ≤ d)"
            )
        if b > m:
            problems.append(f"B={b} exceeds the width m={m}")
    p_ord = _order(sig, cfg.order)
    if abs(float(kappa(sig, p_ord, torch.tensor(1.0)))) < 1e-4:
        problems.append(
            f"the activation's Hermite coefficient κ_{p_ord} is zero: the gradient carries no "
            f"order-{p_ord} moment (a linear activation leaks only span{{x_i}})"
        )
    w = hidden.weight.detach().double().flatten()
    s = w.pow(2).mean().sqrt()
    kurt = float(((w / s) ** 4).mean())
    if abs(kurt - 3) > max(0.3, 20 / math.sqrt(w.numel())) or abs(float(w.mean() / s)) > 5 / math.sqrt(w.numel()):
        problems.append(
            f"the first-layer weights are not i.i.d. centred Gaussian (kurtosis {kurt:.2f}, 3 expected; "
            "PyTorch's default uniform init gives 1.8): the method needs parameters at a random "
            "Gaussian point"
        )
    a = head.weight.detach().double().flatten()
    if abs(float(a.mean() / a.pow(2).mean().sqrt())) > 5 / math.sqrt(a.numel()):
        problems.append("the head weights are not centred (E[A] = 0 is needed by the first-layer estimator)")
    return problems


def _he_sum(g: Tensor, p_mat: Tensor, order: int) -> Tensor:
    """``(1/m) Σ_j g[k, j] He_order(P_j)`` as a [K, B, ..., B] tensor (orders 3 and 4)."""
    m = p_mat.shape[0]
    eye = torch.eye(p_mat.shape[1], dtype=DT)
    if order == 3:
        t = torch.einsum("kj,ja,jb,jc->kabc", g, p_mat, p_mat, p_mat) / m
        v = g @ p_mat / m
        return t - (
            torch.einsum("ka,bc->kabc", v, eye)
            + torch.einsum("kb,ac->kabc", v, eye)
            + torch.einsum("kc,ab->kabc", v, eye)
        )
    t = torch.einsum("kj,ja,jb,jc,jd->kabcd", g, p_mat, p_mat, p_mat, p_mat) / m
    q = torch.einsum("kj,ja,jb->kab", g, p_mat, p_mat) / m
    s0 = g.sum(1) / m
    two = sum(
        torch.einsum(f"k{a}{b},{c}{d}->kabcd", q, eye)
        for a, b, c, d in (
            ("a", "b", "c", "d"),
            ("a", "c", "b", "d"),
            ("a", "d", "b", "c"),
            ("b", "c", "a", "d"),
            ("b", "d", "a", "c"),
            ("c", "d", "a", "b"),
        )
    )
    ii = (
        torch.einsum("ab,cd->abcd", eye, eye)
        + torch.einsum("ac,bd->abcd", eye, eye)
        + torch.einsum("ad,bc->abcd", eye, eye)
    )
    return t - two + s0.view(-1, 1, 1, 1, 1) * ii


def _first_layer(c: Tensor, gproj: Tensor, p_mat: Tensor, order: int) -> Tensor:
    """``(1/m) Σ_j c[k, j] G_j ⊗ He_{order−1}(P_j)``, symmetrised."""
    m, b = p_mat.shape
    eye = torch.eye(b, dtype=DT)
    if order == 3:
        t = torch.einsum("kj,ja,jb,jc->kabc", c, gproj, p_mat, p_mat) / m
        t = t - torch.einsum("ka,bc->kabc", c @ gproj / m, eye)
    else:
        t = torch.einsum("kj,ja,jb,jc,jd->kabcd", c, gproj, p_mat, p_mat, p_mat) / m
        u = torch.einsum("kj,ja,jb->kab", c, gproj, p_mat) / m
        t = t - (
            torch.einsum("kab,cd->kabcd", u, eye)
            + torch.einsum("kac,bd->kabcd", u, eye)
            + torch.einsum("kad,bc->kabcd", u, eye)
        )
    perms = list(itertools.permutations(range(1, order + 1)))
    return sum((t.permute(0, *p) for p in perms), torch.zeros_like(t)) / len(perms)


def _estimate(parts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean over chunks and the variance of that mean (summed over entries)."""
    st = torch.stack(parts)
    mean = st.mean(0)
    var = ((st - mean) ** 2).sum() / (len(parts) * (len(parts) - 1))
    return mean, var


def _cp_fit(t: Tensor, xs: Tensor, order: int) -> tuple[Tensor, float]:
    """Least-squares coefficients [B, K] of ``T_k ≈ Σ_i c_ik x_i^{⊗p}`` and the relative residual."""
    k = t.shape[0]
    design = torch.stack([_outer(v, order).flatten() for v in xs], 1)  # [B^p, B]
    coef = torch.linalg.lstsq(design, t.reshape(k, -1).T).solution  # [B, K]
    res = float((design @ coef - t.reshape(k, -1).T).norm() / t.norm())
    return coef, res


def _outer(v: Tensor, order: int) -> Tensor:
    out = v
    for _ in range(order - 1):
        out = torch.tensordot(out, v, dims=0)
    return out


def _pencil(t3: Tensor, gen: torch.Generator) -> Tensor:
    """One Jennrich step on an order-3 tensor ``T_k = Σ_i c_ik v_i^{⊗3}`` [K, B, B, B], whitened.

    Two random slices ``M_u = V D_u Vᵀ``, ``M_v = V D_v Vᵀ``; ``M_v = Q Λ Qᵀ`` (symmetric eigh) gives
    ``W = Q|Λ|^{-1/2}`` with ``Wᵀ M_v W = S = sign(Λ)``; the eigenvectors z of ``(Wᵀ M_u W) S`` map back to
    ``v_i ∝ Q|Λ|^{1/2} z``. Same eigenvectors as ``M_u M_v⁻¹`` (the paper's simultaneous diagonalisation),
    without a pseudo-inverse's rank cut-off and with a symmetric (well-conditioned) first factorisation.
    Returns unit rows [B, B]."""
    k, b = t3.shape[0], t3.shape[1]
    theta = torch.randn(k, generator=gen, dtype=DT)
    u, v = torch.randn(b, generator=gen, dtype=DT), torch.randn(b, generator=gen, dtype=DT)
    mu = torch.einsum("k,kabc,c->ab", theta, t3, u)
    mv = torch.einsum("k,kabc,c->ab", theta, t3, v)
    mu, mv = (mu + mu.T) / 2, (mv + mv.T) / 2
    lam, q = torch.linalg.eigh(mv)
    mag = lam.abs().clamp_min(float(lam.abs().max()) * 1e-12 + 1e-300)
    w = q * mag.rsqrt()
    _, z = torch.linalg.eig((w.T @ mu @ w) * torch.sign(lam)[None, :])
    return F.normalize(((q * mag.sqrt()) @ z.real).T, dim=1)


def _decompose(t: Tensor, order: int, cfg: TensorConfig, gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """CP decomposition of the symmetric moment tensor: ``cfg.trials`` seeded whitened Jennrich pencils
    (order 4: the last mode contracted with a random vector first), the ``cfg.refined`` best by fit
    refined by L-BFGS, the best refined one kept. Returns unit directions [B, B], coefficients [B, K]
    and the relative residual."""
    cands = []
    for _ in range(cfg.trials):
        t3 = t if order == 3 else torch.einsum("kabcd,d->kabc", t, torch.randn(t.shape[1], generator=gen, dtype=DT))
        xs = _pencil(t3, gen)
        coef, res = _cp_fit(t, xs, order)
        cands.append((res, xs, coef))
    cands.sort(key=lambda c: c[0])
    refined = [_refine(t, xs, coef, order, cfg.refine_steps) for _, xs, coef in cands[: cfg.refined]]
    return min(refined, key=lambda r: r[2])


def _refine(t: Tensor, xs: Tensor, coef: Tensor, order: int, steps: int) -> tuple[Tensor, Tensor, float]:
    """Least-squares CP fit ``Σ_k ‖Σ_i c_ik x_i^{⊗p} − T_k‖²`` by L-BFGS from a Jennrich start (float64)."""
    if steps <= 0:
        return xs, coef, _cp_fit(t, xs, order)[1]
    x = xs.clone().contiguous().requires_grad_(True)
    c = coef.clone().contiguous().requires_grad_(True)
    letters = "abcd"[:order]
    expr = ",".join(f"i{l}" for l in letters) + ",ik->k" + letters
    scale = t.norm()
    opt = torch.optim.LBFGS([x, c], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        val = ((torch.einsum(expr, *([x] * order), c) - t) ** 2).sum() / scale**2
        val.backward()
        return val

    opt.step(closure)
    xs = F.normalize(x.detach(), dim=1)
    coef, res = _cp_fit(t, xs, order)
    return xs, coef, res


def _canonical(dirs: Tensor) -> Tensor:
    """Each row's sign fixed so that its largest-magnitude entry is positive (eigenvectors have none)."""
    idx = dirs.abs().argmax(1, keepdim=True)
    return dirs * torch.sign(dirs.gather(1, idx))


def _dsigma(sig, z: Tensor) -> Tensor:
    z = z.detach().requires_grad_(True)
    return torch.autograd.grad(sig(z).sum(), z)[0]


def _scale_fit(col: Tensor, u: Tensor, a: Tensor, sig, b: int, rhos: Tensor) -> tuple[float, Tensor, float]:
    """Norm ρ and output residual r̂ of one sample from its first-layer gradient column.

    ``∇W = Σ_i g_i x_iᵀ`` with ``g_i = (Aᵀ r_i) ⊙ σ'(W x_i) / B``; with the directions known, the column
    ``ĝ_i`` (from the dual basis) equals ``ρ_i (Aᵀ r_i) ⊙ σ'(ρ_i u_i) / B`` (``u_i = W x̂_i``): m equations,
    linear in the K entries of ``r_i`` for fixed ``ρ_i``. ρ minimises the profiled least-squares residual
    (a log grid, then golden-section search between the grid neighbours of the best point)."""

    def fit(rho: float) -> tuple[float, Tensor]:
        design = (rho / b) * _dsigma(sig, rho * u)[:, None] * a.T  # [m, K]
        r = torch.linalg.lstsq(design, col[:, None]).solution[:, 0]
        return float((design @ r - col).norm() / col.norm().clamp_min(1e-300)), r

    errs = [fit(float(rho))[0] for rho in rhos]
    j = min(range(len(errs)), key=errs.__getitem__)
    lo, hi = math.log(float(rhos[max(j - 1, 0)])), math.log(float(rhos[min(j + 1, len(rhos) - 1)]))
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if fit(math.exp(m1))[0] <= fit(math.exp(m2))[0]:
            hi = m2
        else:
            lo = m1
    rho = math.exp((lo + hi) / 2)
    err, r = fit(rho)
    return rho, r, err


def has_flip_symmetry(obs: Observation) -> bool:
    """Two classes, an odd activation and no head bias: ``(x, y)`` and ``(−x, 1 − y)`` give exactly the same
    gradient (``σ(−Wx) = −σ(Wx)`` flips the logits, hence ``softmax − e_y`` flips with the label), so no
    attack can tell them apart."""
    _, _, sig, head, _ = _two_layer(obs)
    if sig is None or head is None or obs.num_classes != 2 or head.bias is not None:
        return False
    z = torch.linspace(-5, 5, 101, dtype=DT)
    return bool(torch.allclose(sig(-z), -sig(z), atol=1e-12))


def reconstruct(
    obs: Observation, cfg: TensorConfig = TensorConfig(), *, generator: torch.Generator | None = None
) -> TensorReconstruction:
    """The whole pipeline on an observation that meets :func:`tensor_problems`."""
    gen = generator or torch.Generator().manual_seed(0)
    hidden, hname, sig, head, _ = _two_layer(obs)
    assert hidden is not None and head is not None and obs.batch_size is not None  # tensor_problems passed
    b = int(obs.batch_size)
    w = hidden.weight.detach().to(DT)
    a = head.weight.detach().to(DT)
    gw = obs.update[f"{hname}.weight"].to(DT)
    ga = obs.update[f"{obs.head}.weight"].to(DT)
    m, d = w.shape
    order = _order(sig, cfg.order)
    s = float(w.pow(2).mean().sqrt())
    # (1) the span of the inputs: top-B right singular vectors of ∇W, signs canonical
    _, sv, vh = torch.linalg.svd(gw, full_matrices=False)
    u = _canonical(vh[:b]).T  # [d, B]
    gap = float(sv[b] / sv[b - 1]) if b < min(m, d) and float(sv[b - 1]) > 0 else 0.0
    p_all = (w / s) @ u  # [m, B]
    g_all = gw @ u
    # (2) the tensor, by chunks
    k_out = a.shape[0]
    per_unit = k_out * b ** (order - 1)  # einsum intermediate per hidden unit
    n_chunks = max(cfg.chunks, math.ceil(m * per_unit / 3e7))
    idx = torch.arange(m).chunk(n_chunks)
    sec = [_he_sum(ga[:, j], p_all[j], order) for j in idx]
    ea2 = float(a.pow(2).mean())
    fir = [s * _first_layer(a[:, j] / ea2, g_all[j], p_all[j], order) for j in idx]
    t2, v2 = _estimate(sec)
    t1, v1 = _estimate(fir)
    if cfg.estimator == "first":
        t, var = t1, v1
    elif cfg.estimator == "second":
        t, var = t2, v2
    else:
        w1, w2 = 1 / v1.clamp_min(1e-300), 1 / v2.clamp_min(1e-300)
        t = (w1 * t1 + w2 * t2) / (w1 + w2)
        var = 1 / (w1 + w2)
    noise = float(var.sqrt() / t.norm().clamp_min(1e-300))
    if noise > cfg.max_noise:
        needed = int(math.ceil(m * (noise / 0.05) ** 2))
        raise UnsupportedError(
            "tensor",
            [
                f"the width m={m} is too small for B={b}, d={d}: the gradient tensor's "
                f"estimated relative noise is {noise:.2f} (> {cfg.max_noise}); about "
                f"m ≈ {needed} hidden units would bring it to 0.05"
            ],
        )
    # (3) decomposition; directions in input space, signs canonical, ordered by coefficient size
    xs, coef, res = _decompose(t, order, cfg, gen)
    if res > cfg.max_fit_ratio * noise:
        raise UnsupportedError(
            "tensor",
            [
                f"the decomposition did not find B={b} components: the rank-{b} fit leaves {res:.2f} of the "
                f"gradient tensor unexplained, {res / noise:.1f}× its estimated noise {noise:.2f} (> "
                f"{cfg.max_fit_ratio}×); a wider network (m > {m}) or a smaller batch is needed"
            ],
        )
    dirs = _canonical(xs @ u.T)  # [B, d] unit (U orthonormal)
    coef, _ = _cp_fit(t, dirs @ u, order)
    perm = torch.argsort(-coef.norm(dim=1), stable=True)
    dirs, coef = dirs[perm], coef[perm]
    # (4) norm, sign and label per sample: for each sign, the norm and output residual r̂ from the
    # first-layer gradient; the sign and label are those whose softmax(f(x)) − e_y best matches r̂.
    # Under the flip symmetry both signs fit equally, and the canonical one is kept
    cols = gw @ torch.linalg.pinv(dirs)  # [m, B]: column i = ±ρ_i g_i
    pre = w @ dirs.T  # [m, B]
    lo, hi = cfg.tau_range
    rhos = torch.logspace(math.log10(lo / s), math.log10(hi / s), 61, dtype=DT)
    symmetric = has_flip_symmetry(obs)
    hb = head.bias.detach().to(DT) if head.bias is not None else torch.zeros(k_out, dtype=DT)
    eye = torch.eye(k_out, dtype=DT)
    out_x, labels, scale_res, label_res = [], [], [], []
    for i in range(b):
        best = None
        for sign in (1.0,) if symmetric else (1.0, -1.0):
            rho, r_hat, err = _scale_fit(cols[:, i], sign * pre[:, i], a, sig, b, rhos)
            x_i = sign * rho * dirs[i]
            prob = torch.softmax(sig(w @ x_i) @ a.T + hb, 0)
            errs = (sign * r_hat[None] - (prob[None] - eye)).norm(dim=1) / r_hat.norm().clamp_min(1e-300)
            y = int(errs.argmin())
            if best is None or err + float(errs[y]) < best[0] + best[1]:
                best = (err, float(errs[y]), x_i, y)
        scale_res.append(best[0])  # type: ignore[index]
        label_res.append(best[1])  # type: ignore[index]
        out_x.append(best[2])  # type: ignore[index]
        labels.append(best[3])  # type: ignore[index]
    x_tensor = torch.stack(out_x)
    x, polish = _polish(obs, x_tensor, labels, cfg.polish_steps)
    info = {
        "order": order,
        "width": m,
        "d": d,
        "batch_size": b,
        "weight_scale": s,
        "span_gap": gap,
        "flip_symmetric": symmetric,
        "gradient_distance_tensor": _replay_distance(obs, list(x_tensor), labels),
        "gradient_distance": _replay_distance(obs, list(x), labels),
        "polish": polish,
        "label_residuals": label_res,
        "noise_first_layer": float(v1.sqrt() / t1.norm()),
        "noise_second_layer": float(v2.sqrt() / t2.norm()),
        "estimator": cfg.estimator,
    }
    dirs = F.normalize(x, dim=1)
    return TensorReconstruction(x, x_tensor, dirs, labels, coef, order, noise, res, scale_res, info)


def _polish(obs: Observation, x0: Tensor, labels: list[int], steps: int) -> tuple[Tensor, dict[str, Any]]:
    """Gradient matching from the tensor estimate (float64 L-BFGS on the relative squared distance between the
    replayed and the observed gradient of both layers, labels fixed). The observed gradient is an exact function
    of the batch while the tensor is a finite-width estimate of its moments, so from a start in the basin this
    removes the estimate's noise. Kept only if it lowers the distance."""
    if steps <= 0:
        return x0, {"steps": 0}
    hidden, hname, sig, head, _ = _two_layer(obs)
    assert hidden is not None and head is not None  # tensor_problems passed
    w = hidden.weight.detach().to(DT).requires_grad_(True)
    a = head.weight.detach().to(DT).requires_grad_(True)
    hb = head.bias.detach().to(DT).requires_grad_(True) if head.bias is not None else None
    params = [w, a] + ([hb] if hb is not None else [])
    names = [f"{hname}.weight", f"{obs.head}.weight"] + ([f"{obs.head}.bias"] if hb is not None else [])
    target = [obs.update[n].to(DT) for n in names]
    den = sum(float(t.pow(2).sum()) for t in target)
    y = torch.tensor(labels)

    def distance(x: Tensor, create_graph: bool) -> Tensor:
        logits = sig(x @ w.T) @ a.T + (hb if hb is not None else 0.0)
        grads = torch.autograd.grad(cross_entropy(logits, y), params, create_graph=create_graph)
        return torch.stack([((g - t) ** 2).sum() for g, t in zip(grads, target)]).sum() / den

    start = float(distance(x0, False))
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        val = distance(x, True)
        val.backward(inputs=[x])
        return val

    opt.step(closure)
    end = float(distance(x.detach(), False))
    kept = end < start
    info = {"steps": steps, "distance_before": start, "distance_after": min(start, end), "kept": kept}
    # squared relative distance: converged runs reached 1e-9–2e-7, partial ones (min cos 0.9996) 3e-5
    info["converged"] = info["distance_after"] < CONVERGED
    return (x.detach() if kept else x0), info


def _replay_distance(obs: Observation, xs: list[Tensor], labels: list[int]) -> float:
    """Relative L2 distance between the gradient replayed on a candidate batch and the observed one."""
    net, params = obs.functional()
    x = torch.stack(xs).float().view(len(xs), *obs.input_shape)
    upd = FedSGD().update_fn(net)(params, x, torch.tensor(labels))
    num = sum(float((upd[k] - obs.update[k]).double().pow(2).sum()) for k in upd)
    den = sum(float(obs.update[k].double().pow(2).sum()) for k in upd)
    return math.sqrt(num / max(den, 1e-300))


@dataclass
class QueryScore:
    """A reconstruction scored against the truth, matched by |cos| (Hungarian assignment). Under the flip
    symmetry (:func:`has_flip_symmetry`) a reconstruction ``(−x, 1 − y)`` is the same solution as
    ``(x, y)``: it is flipped before scoring, so ``cos`` is then ≥ 0 and a flipped label is not an error.
    Otherwise cosines are signed and labels compared as they are."""

    cos: list[float]  # per true sample
    rel_error: list[float]  # ‖x̂ − x‖ / ‖x‖ per true sample
    labels_ok: list[bool]
    order: list[int]  # reconstruction index matched to each true sample
    symmetric: bool


def score_query(x: Tensor, labels: list[int], truth: QueryTruth, symmetric: bool) -> QueryScore:
    cos, order = match_cosines(x, truth.x)
    out_cos, rel, ok = [], [], []
    for i, j in enumerate(order):
        c, xr, yr = cos[i], x[j].double(), labels[j]
        if symmetric and c < 0:
            c, xr, yr = -c, -xr, 1 - yr
        out_cos.append(c)
        rel.append(float((xr - truth.x[i]).norm() / truth.x[i].norm()))
        ok.append(yr == int(truth.labels[i]))
    return QueryScore(out_cos, rel, ok, order, symmetric)


@attack("tensor")
class TensorAttack(Attack):
    """Tensor-decomposition reconstruction of a batch through a two-layer network at random Gaussian weights.

    Paper: Wang, Lee & Lei AISTATS 2023. Needs: the ``twolayer`` model (its own single-query scenario) and a
    FedSGD gradient. Settings: :class:`TensorConfig`."""

    paper = "Wang, Lee & Lei AISTATS 2023, arXiv:2212.03714"
    Config = TensorConfig

    def problems(self, obs: Observation) -> list[str]:
        return tensor_problems(obs, self.config)

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
        rec = reconstruct(obs, self.config, generator=generator)
        x = rec.x.float().view(-1, *obs.input_shape)
        if len(obs.input_shape) == 3:
            images = denormalize(obs, x)
        else:  # vectors: show each as a min-max scaled row
            lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
            images = ((x - lo) / (hi - lo).clamp_min(1e-12)).view(x.shape[0], 1, 1, -1)
        return AttackResult(
            name=self.name,
            images=images,
            iterations=0,
            seconds=time.perf_counter() - t0,
            final_loss=rec.fit_residual,
            labels=rec.labels,
            assumptions={
                **rec.info,
                "noise": rec.noise,
                "fit_residual": rec.fit_residual,
                "scale_residuals": rec.scale_residuals,
            },
            config=self.config_json(),
        )
