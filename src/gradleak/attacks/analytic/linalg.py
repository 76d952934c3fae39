"""The linear algebra of one layer that the analytic attacks and the leakage analysis share: the layer's
weight and gradient operators, numerical ranks, and solving one layer for its input (PAPERS.md §3).

Everything runs in float64 (:data:`DTYPE`); ranks count singular values above :data:`RANK_RTOL` × the
largest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError

__all__ = [
    "DTYPE",
    "RANK_RTOL",
    "LayerSolution",
    "conv_gradient_operator",
    "dense_operator",
    "gram_svd",
    "numerical_rank",
    "singular_values",
    "solve_conv",
    "solve_fc",
    "solve_head",
]

#: singular values below RANK_RTOL × the largest count as zero. Gradients are float32 (relative
#: error ~1e-7), so directions weaker than this cannot be recovered from them anyway.
RANK_RTOL = 1e-6
DTYPE = torch.float64


def conv_gradient_operator(delta: Tensor, in_hw: tuple[int, int], conv: nn.Conv2d) -> Tensor:
    """``D₁(δ)`` [C_out·kh·kw, H·W]: ``∇K[o, c, u, v] = (D₁ x[c])[(o, u, v)]`` for every input channel c,
    i.e. ``D₁[(o, u, v), q] = δ[o, p]`` where output position p reads input pixel q through tap (u, v)."""
    h, w = in_hw
    if isinstance(conv.padding, str):
        raise InputError(f"convolutions with padding={conv.padding!r} are not supported; use numeric padding")
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    cout, ho, wo = delta.shape
    d1 = torch.zeros(cout, kh, kw, h * w, dtype=DTYPE)
    oi = torch.arange(ho).view(-1, 1)
    oj = torch.arange(wo).view(1, -1)
    dd = delta.to(DTYPE)
    for u in range(kh):
        for v in range(kw):
            ii, jj = (oi * sh - ph + u).expand(ho, wo), (oj * sw - pw + v).expand(ho, wo)
            ok = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            d1[:, u, v, (ii * w + jj)[ok]] = dd[:, ok]
    return d1.reshape(cout * kh * kw, h * w)


def dense_operator(module: nn.Linear | nn.Conv2d, in_shape: tuple[int, ...], chunk: int = 2048) -> Tensor:
    """The layer's weight as a dense matrix [outputs, inputs] (bias excluded)."""
    wt = module.weight.detach().to(DTYPE)
    if isinstance(module, nn.Linear):
        return wt
    n = math.prod(in_shape)
    rows = []
    for s in range(0, n, chunk):
        e = torch.zeros(min(chunk, n - s), n, dtype=DTYPE)
        e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1
        out = F.conv2d(e.view(-1, *in_shape), wt, None, module.stride, module.padding)
        rows.append(out.reshape(e.shape[0], -1))
    return torch.cat(rows).T.contiguous()


def gram_svd(a: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values (descending) and right singular vectors of ``a`` via the eigen-decomposition of
    ``aᵀa`` (5–10× faster than an SVD here; accurate for singular values above ~1e-7 of the largest)."""
    if a.shape[1] == 0:
        return torch.zeros(0, dtype=a.dtype), torch.zeros(0, 0, dtype=a.dtype)
    evals, evecs = torch.linalg.eigh(a.T @ a)
    evals, evecs = evals.flip(0), evecs.flip(1)
    return evals.clamp_min(0).sqrt(), evecs


def _lstsq(a: Tensor, rhs: Tensor, rtol: float) -> tuple[Tensor, int, float | None]:
    """Minimum-norm least squares with singular values below ``rtol``·max dropped; returns (solution,
    numerical rank, condition of the kept part). Full column rank takes the fast Cholesky path."""
    g = a.T @ a
    evals = torch.linalg.eigvalsh(g).clamp_min(0)
    s = evals.flip(0).sqrt()
    r = numerical_rank(s, rtol)
    if r == 0:
        return torch.zeros(a.shape[1], dtype=a.dtype), 0, None
    cond = float(s[0] / s[r - 1])
    if r == a.shape[1]:
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) == 0:
            return torch.cholesky_solve((a.T @ rhs)[:, None], chol)[:, 0], r, cond
    s_all, v = gram_svd(a)
    vr = v[:, :r]
    return vr @ ((vr.T @ (a.T @ rhs)) / s_all[:r].pow(2)), r, cond


def singular_values(a: Tensor) -> Tensor:
    """Singular values of ``a`` from the eigenvalues of its smaller Gram matrix."""
    if 0 in a.shape:
        return torch.zeros(0, dtype=a.dtype)
    g = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
    return torch.linalg.eigvalsh(g).flip(0).clamp_min(0).sqrt()


def numerical_rank(s: Tensor, rtol: float) -> int:
    """The number of singular values ``s`` above ``rtol`` times the largest."""
    return int((s > rtol * s.max()).sum()) if s.numel() and float(s.max()) > 0 else 0


@dataclass
class LayerSolution:
    """One solved layer: the recovered input and how well the layer was determined."""

    name: str
    unknowns: int
    weight_rows: int
    gradient_rows: int
    rank_gradient: int
    rank: int
    condition: float | None
    residual: float  # relative residual of the stacked system at the solution
    x: Tensor | None = None

    @property
    def deficiency(self) -> int:
        return self.rank - self.unknowns

    def solved(self) -> Tensor:
        """``x``, which every solver sets (an inverted chain drops it from the layers it returns)."""
        assert self.x is not None
        return self.x

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "x"}
        d["deficiency"] = self.deficiency
        return d


def solve_fc(name: str, gw: Tensor, delta: Tensor) -> LayerSolution:
    """``∇W = δ xᵀ`` → ``x = δᵀ∇W / ‖δ‖²`` (every row with δ_n ≠ 0 gives x exactly)."""
    gw, delta = gw.to(DTYPE), delta.to(DTYPE).flatten()
    nrm = float(delta.pow(2).sum())
    n = gw.shape[1]
    if nrm == 0:
        return LayerSolution(name, n, gw.shape[0], gw.numel(), 0, 0, None, 1.0, torch.zeros(n, dtype=DTYPE))
    x = delta @ gw / nrm
    res = float((torch.outer(delta, x) - gw).norm() / gw.norm().clamp_min(1e-300))
    return LayerSolution(name, n, gw.shape[0], gw.numel(), n, n, 1.0, res, x)


def solve_conv(
    name: str,
    conv: nn.Conv2d,
    in_shape: tuple[int, ...],
    z: Tensor,
    delta: Tensor,
    gk: Tensor,
    *,
    rtol: float = RANK_RTOL,
    extra: tuple[Tensor, Tensor] | None = None,
) -> LayerSolution:
    """Solve ``W x = z − b`` and ``vec ∇K = (I ⊗ D₁(δ)) x`` for the unpadded input ``x`` [C, H, W].

    The gradient rows are solved exactly first (per channel, ``x_c = D₁⁺ ∇K[:, c] + N β_c``), then the
    weight rows fix ``β`` in the least-squares sense; directions neither fixes keep the minimum norm
    (R-GAP's ``lstsq`` behaviour). ``extra = (M, r)`` adds rows ``M x = r`` (e.g. a pull-back prior)."""
    c, h, w = in_shape
    n = c * h * w
    cout = gk.shape[0]
    d1 = conv_gradient_operator(delta, (h, w), conv)  # [cout·k², HW]
    g = gk.to(DTYPE).permute(1, 0, 2, 3).reshape(c, -1)  # [C, cout·k²]
    s1, v1 = gram_svd(d1)
    r1 = numerical_rank(s1, rtol)
    vr, sr = v1[:, :r1], s1[:r1]
    xd = (g @ (d1 @ vr)) / sr.pow(2) @ vr.T  # [C, HW]: D₁⁺ applied per channel
    null = v1[:, r1:]  # [HW, HW − r1]
    wd = dense_operator(conv, in_shape)  # [rows, n]
    zb = z.to(DTYPE).flatten()
    if conv.bias is not None:
        zb = zb - conv.bias.detach().to(DTYPE).repeat_interleave(z[0].numel())
    rank, cond = c * r1, None
    x = xd.flatten()
    if null.shape[1]:
        a = torch.einsum("rcq,qk->rck", wd.view(-1, c, h * w), null).reshape(wd.shape[0], -1)
        rhs = zb - wd @ x
        if extra is not None:
            m, r = extra
            a = torch.cat([a, torch.einsum("rcq,qk->rck", m.view(-1, c, h * w), null).reshape(m.shape[0], -1)])
            rhs = torch.cat([rhs, r - m @ x])
        beta, r2, cond = _lstsq(a, rhs, rtol)
        rank += r2
        x = x + torch.einsum("qk,ck->cq", null, beta.view(c, -1)).flatten()
    elif r1:
        cond = float(s1[0] / s1[r1 - 1])
    res_w = (wd @ x - zb).norm() / zb.norm().clamp_min(1e-300)
    res_g = (x.view(c, -1) @ d1.T - g).norm() / g.norm().clamp_min(1e-300)
    return LayerSolution(
        name, n, wd.shape[0], cout * c * d1.shape[0] // cout, c * r1, rank, cond, float(max(res_w, res_g)), x
    )


def solve_head(w: Tensor, gw: Tensor, gb: Tensor | None) -> tuple[Tensor, int, dict[str, Any]]:
    """The head's error vector ``δ = softmax(z) − e_y`` (B=1, cross-entropy) and the label ``y``.

    With a bias, ``δ = ∇b``. Without one (R-GAP's setting), ``M = ∇W Wᵀ = δ zᵀ`` is rank one: ``δ = α m``
    for a column ``m`` of M and ``z = v/α``; the scalar α solves ``α m = softmax(v/α) − e_y``."""
    gw, w = gw.to(DTYPE), w.to(DTYPE)
    if gb is not None:
        delta = gb.to(DTYPE)
        return delta, int(delta.argmin()), {"head": "bias gradient"}
    m_mat = gw @ w.T
    j = int(m_mat.norm(dim=0).argmax())
    m = m_mat[:, j]
    if float(m.norm()) == 0:
        return torch.zeros_like(m), 0, {"head": "zero gradient"}
    v = m @ m_mat / m.pow(2).sum()
    best: tuple[float, float, int] | None = None
    for sign in (1.0, -1.0):
        sm = sign * m
        if int((sm < 0).sum()) != 1:
            continue
        y = int(sm.argmin())
        e = torch.zeros_like(m)
        e[y] = 1

        def resid(log_a: float) -> float:
            a = math.exp(log_a)
            return float((a * sm - (torch.softmax(v / (sign * a), 0) - e)).norm() / (a * sm).norm())

        grid = torch.linspace(-30, 10, 401).tolist()
        vals = [resid(t) for t in grid]
        k = min(range(len(vals)), key=vals.__getitem__)
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        for _ in range(80):  # golden-section refinement
            m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
            if resid(m1) < resid(m2):
                hi = m2
            else:
                lo = m1
        t = 0.5 * (lo + hi)
        r = resid(t)
        if best is None or r < best[0]:
            best = (r, sign * math.exp(t), y)
    if best is None:
        raise InputError("the head gradient is not that of one cross-entropy sample (no sign pattern fits)")
    r, alpha, y = best
    return alpha * m, y, {"head": "rank-one head gradient (no bias)", "head_residual": r}
