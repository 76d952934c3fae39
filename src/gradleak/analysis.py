"""Per-layer leakage analysis — Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on Privacy",
ICLR 2021, arXiv:2010.07733 (rank analysis); Chen & Campbell, "Understanding Training-Data Leakage
from Gradients in Neural Networks for Image Classification", NeurIPS 2021 Workshop, arXiv:2111.10178,
and the BMVC 2022 follow-up arXiv:2210.13231 (per-layer deficiency, "COPA index").

For one sample (B=1) each fully connected or convolutional layer ``z = W x + b`` is a linear problem
in its input ``x`` once the layer above is known (PAPERS.md §3):

- *weight constraints* ``W x = z − b`` — one row per output unit whose pre-activation the attacker can
  read back from the next layer's input (all of them through an invertible activation; only the
  active units through a ReLU; none through pooling or a residual sum; BatchNorm in train mode
  costs two unknowns per channel, its batch mean and scale);
- *gradient constraints* ``∇W = δ xᵀ`` (FC) or ``vec ∇K = D(δ) x`` (convolution: the input correlated
  with the output error ``δ``); for a convolution ``D(δ) = I_{C_in} ⊗ D₁(δ)`` acts on every input
  channel alike, which this module exploits: ``rank [W; D] = C_in·rank D₁ + rank(W (I ⊗ N))`` with
  ``N`` a basis of ``ker D₁``.

A layer is determined when that rank equals its number of unknowns ``C_in·H·W``. Its *deficiency*
``def_l = rank − unknowns ≤ 0`` feeds the COPA index of Chen & Campbell's code,
``Σ_{l=0}^{L−2} round(def_l·(L−1−l)/(L−1))`` (0: every layer determined, more negative: safer), and
R-GAP's rank view as ``Σ_l (unknowns − rank)`` (ours: the number of input directions left
undetermined; the paper's exact carry-over rule is not available to us). Ranks are numerical
(singular values above ``rtol``·max) where the matrices fit ``exact_limit``; elsewhere they are
upper bounds from counting formulas and every number says which it is.

This module also holds the linear algebra the analytic attacks share: tracing a model into a chain of
layers, inverting element-wise activations and solving one layer.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError

__all__ = ["Op", "LayerSolution", "LayerAnalysis", "ModelAnalysis", "trace_chain", "analyze_model",
           "conv_gradient_operator", "dense_operator", "solve_fc", "solve_conv", "solve_head",
           "copa_index", "RANK_RTOL"]

#: singular values below RANK_RTOL × the largest count as zero. Gradients are float32 (relative
#: error ~1e-7), so directions weaker than this cannot be recovered from them anyway.
RANK_RTOL = 1e-6
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------------
# Tracing a model into ops
# ---------------------------------------------------------------------------------------------------
@dataclass
class Op:
    """One node of a traced model. ``kind``: ``affine`` (Linear/Conv2d), ``invertible`` (element-wise,
    invertible), ``reshape``, ``relu``, ``pool``, ``batchnorm_train`` or ``other``."""

    name: str
    kind: str
    what: str
    module: nn.Module | None = None
    slope: float | None = None                  # LeakyReLU slope
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    # -- element-wise inverse and derivative (kind == "invertible") ----------------------------------
    def inverse(self, y: Tensor) -> Tensor:
        """The pre-activation ``z`` with ``σ(z) = y``."""
        w = self.what
        if w in ("identity", "dropout"):
            return y
        if w == "leaky_relu":
            return torch.where(y > 0, y, y / self.slope)
        if w == "sigmoid":
            y = y.clamp(1e-12, 1 - 1e-12)
            return torch.log(y) - torch.log1p(-y)
        if w == "tanh":
            return torch.atanh(y.clamp(-1 + 1e-12, 1 - 1e-12))
        if w == "softplus":
            return torch.where(y > 20, y, torch.log(torch.expm1(y.clamp_min(1e-300))))
        if w == "batchnorm_eval":
            g, b, mu, sd = self._bn()
            return (y - b) / g * sd + mu
        raise InputError(f"{self.name}: {w} has no inverse")

    def derivative(self, z: Tensor, y: Tensor) -> Tensor:
        """``σ'(z)`` (``y = σ(z)`` given to save work)."""
        w = self.what
        if w in ("identity", "dropout"):
            return torch.ones_like(z)
        if w == "leaky_relu":
            return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))
        if w == "sigmoid":
            return y * (1 - y)
        if w == "tanh":
            return 1 - y * y
        if w == "softplus":
            return torch.sigmoid(z)
        if w == "batchnorm_eval":
            g, _, _, sd = self._bn()
            return (g / sd).expand_as(z)
        raise InputError(f"{self.name}: {w} has no derivative rule")

    def _bn(self) -> tuple[Tensor, ...]:
        m = self.module
        c = m.num_features  # type: ignore[union-attr]
        shape = (c,) + (1,) * (len(self.in_shape) - 1)
        g = (m.weight if m.weight is not None else torch.ones(c)).detach().to(DTYPE).view(shape)
        b = (m.bias if m.bias is not None else torch.zeros(c)).detach().to(DTYPE).view(shape)
        mu = m.running_mean.detach().to(DTYPE).view(shape)
        sd = (m.running_var.detach().to(DTYPE) + m.eps).sqrt().view(shape)
        return g, b, mu, sd


_INVERTIBLE_MODULES: dict[type, str] = {nn.Identity: "identity", nn.LeakyReLU: "leaky_relu",
                                        nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softplus: "softplus"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_ELEMENTWISE_FUNCS: dict[Any, str] = {torch.sigmoid: "sigmoid", torch.tanh: "tanh", F.leaky_relu: "leaky_relu",
                                      F.softplus: "softplus", torch.relu: "relu", F.relu: "relu"}


def _classify(gm: fx.GraphModule, node: fx.Node) -> Op:
    name = str(node.target)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return Op(name, "affine", type(m).__name__, m)
        if type(m) in _INVERTIBLE_MODULES:
            what = _INVERTIBLE_MODULES[type(m)]
            if what == "leaky_relu" and m.negative_slope <= 0:
                return Op(name, "relu", "LeakyReLU with slope <= 0 (not invertible)", m)
            if what == "softplus" and (m.beta != 1 or m.threshold < 20):
                return Op(name, "other", "Softplus with beta != 1", m)
            return Op(name, "invertible", what, m, slope=getattr(m, "negative_slope", None))
        if isinstance(m, nn.Dropout):
            return Op(name, "invertible" if not m.training else "other", "dropout" if not m.training else
                      "Dropout in train mode (random mask)", m)
        if isinstance(m, nn.Flatten):
            return Op(name, "reshape", "flatten", m)
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return Op(name, "relu", type(m).__name__, m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or m.running_mean is None:
                return Op(name, "batchnorm_train", type(m).__name__ + " (batch statistics)", m)
            return Op(name, "invertible", "batchnorm_eval", m)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                          nn.MaxPool1d, nn.AvgPool1d)):
            return Op(name, "pool", type(m).__name__, m)
        return Op(name, "other", type(m).__name__, m)
    if node.op == "call_method" and node.target in _RESHAPE_METHODS:
        return Op(name, "reshape", str(node.target))
    if node.op == "call_method" and node.target in ("sigmoid", "tanh", "relu"):
        kind = "relu" if node.target == "relu" else "invertible"
        return Op(name, kind, str(node.target))
    if node.op == "call_function":
        if node.target in (torch.flatten, torch.reshape):
            return Op(name, "reshape", "flatten")
        if node.target in _ELEMENTWISE_FUNCS:
            what = _ELEMENTWISE_FUNCS[node.target]
            if what == "relu":
                return Op(getattr(node.target, "__name__", name), "relu", "relu")
            if what == "leaky_relu":
                slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
                return Op("leaky_relu", "invertible", what, slope=float(slope))
            return Op(getattr(node.target, "__name__", name), "invertible", what)
        if node.target in (operator.add, torch.add, operator.iadd, torch.cat):
            return Op(getattr(node.target, "__name__", name), "other", "residual sum / concatenation")
        if node.target in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
            return Op(node.target.__name__, "pool", node.target.__name__)
    return Op(name, "other", f"{node.op} {getattr(node.target, '__name__', node.target)}")


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code; report it as a user error
        raise InputError(f"cannot trace the model with torch.fx ({type(e).__name__}: {e}); the analytic "
                         "methods need a model without data-dependent control flow") from None


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping every node's output (and its gradient, after backward)."""

    def __init__(self, gm: fx.GraphModule, retain: bool):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.retain = retain

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor) and self.retain and out.requires_grad:
            out.retain_grad()
        self.values[n] = out
        return out


def _shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, tuple[int, ...]]:
    rec = _Recorder(gm, retain=False)
    modes = {m: m.training for m in gm.modules()}
    try:                        # eval mode: shapes only, and BatchNorm accepts one 1×1 sample
        gm.eval()
        with torch.no_grad():
            rec.run(torch.zeros(1, *input_shape))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {n: tuple(v.shape[1:]) for n, v in rec.values.items() if isinstance(v, Tensor)}


def trace_chain(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[Op], list[str]]:
    """The model as a chain of ops from input to output, and every reason it is not a chain of
    affine layers with invertible activations (empty if it is)."""
    gm = symbolic_trace(model)
    shapes = _shapes(gm, input_shape)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return [], [f"the model takes {len(placeholders)} inputs; one image tensor is needed"]
    ops: list[Op] = []
    problems: list[str] = []
    node = placeholders[0]
    while True:
        users = list(node.users)
        if len(users) != 1:
            problems.append(f"the output of {node.name} feeds {len(users)} operations (a branch or residual "
                            "connection); the layer-by-layer inversion needs a plain chain")
            break
        node = users[0]
        if node.op == "output":
            break
        op = _classify(gm, node)
        op.in_shape = shapes.get(node.args[0], ()) if node.args and isinstance(node.args[0], fx.Node) else ()
        op.out_shape = shapes.get(node, ())
        ops.append(op)
        if op.kind == "relu":
            problems.append(f"{op.name}: {op.what} is not invertible (its zeroed units lose the pre-activation); "
                            "use LeakyReLU, sigmoid or tanh")
        elif op.kind == "pool":
            problems.append(f"{op.name}: pooling ({op.what}) discards information the layer above cannot restore")
        elif op.kind == "batchnorm_train":
            problems.append(f"{op.name}: BatchNorm in train mode normalises by the sample's own statistics "
                            "(two unknowns per channel); use eval mode or remove it")
        elif op.kind == "other":
            problems.append(f"{op.name}: {op.what} is not supported by the layer-wise inversion")
        elif op.kind == "affine":
            m = op.module
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros"
                                             or isinstance(m.padding, str)):
                problems.append(f"{op.name}: only ungrouped, undilated, zero-padded convolutions with numeric "
                                "padding are supported")
    return ops, problems


# ---------------------------------------------------------------------------------------------------
# Linear operators of one layer
# ---------------------------------------------------------------------------------------------------
def conv_gradient_operator(delta: Tensor, in_hw: tuple[int, int], conv: nn.Conv2d) -> Tensor:
    """``D₁(δ)`` [C_out·kh·kw, H·W]: ``∇K[o, c, u, v] = (D₁ x[c])[(o, u, v)]`` for every input channel c,
    i.e. ``D₁[(o, u, v), q] = δ[o, p]`` where output position p reads input pixel q through tap (u, v)."""
    h, w = in_hw
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


def dense_operator(module: nn.Module, in_shape: tuple[int, ...], chunk: int = 2048) -> Tensor:
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


def _gram_svd(a: Tensor) -> tuple[Tensor, Tensor]:
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
    r = _rank(s, rtol)
    if r == 0:
        return torch.zeros(a.shape[1], dtype=a.dtype), 0, None
    cond = float(s[0] / s[r - 1])
    if r == a.shape[1]:
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) == 0:
            return torch.cholesky_solve((a.T @ rhs)[:, None], chol)[:, 0], r, cond
    s_all, v = _gram_svd(a)
    vr = v[:, :r]
    return vr @ ((vr.T @ (a.T @ rhs)) / s_all[:r].pow(2)), r, cond


def _svals(a: Tensor) -> Tensor:
    """Singular values of ``a`` from the eigenvalues of its smaller Gram matrix."""
    if 0 in a.shape:
        return torch.zeros(0, dtype=a.dtype)
    g = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
    return torch.linalg.eigvalsh(g).flip(0).clamp_min(0).sqrt()


def _rank(s: Tensor, rtol: float) -> int:
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
    residual: float                        # relative residual of the stacked system at the solution
    x: Tensor | None = None

    @property
    def deficiency(self) -> int:
        return self.rank - self.unknowns

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


def solve_conv(name: str, conv: nn.Conv2d, in_shape: tuple[int, int, int], z: Tensor, delta: Tensor,
               gk: Tensor, *, rtol: float = RANK_RTOL, extra: tuple[Tensor, Tensor] | None = None) -> LayerSolution:
    """Solve ``W x = z − b`` and ``vec ∇K = (I ⊗ D₁(δ)) x`` for the unpadded input ``x`` [C, H, W].

    The gradient rows are solved exactly first (per channel, ``x_c = D₁⁺ ∇K[:, c] + N β_c``), then the
    weight rows fix ``β`` in the least-squares sense; directions neither fixes keep the minimum norm
    (R-GAP's ``lstsq`` behaviour). ``extra = (M, r)`` adds rows ``M x = r`` (e.g. a pull-back prior)."""
    c, h, w = in_shape
    n = c * h * w
    cout = gk.shape[0]
    d1 = conv_gradient_operator(delta, (h, w), conv)                          # [cout·k², HW]
    g = gk.to(DTYPE).permute(1, 0, 2, 3).reshape(c, -1)                      # [C, cout·k²]
    s1, v1 = _gram_svd(d1)
    r1 = _rank(s1, rtol)
    vr, sr = v1[:, :r1], s1[:r1]
    xd = (g @ (d1 @ vr)) / sr.pow(2) @ vr.T                                  # [C, HW]: D₁⁺ applied per channel
    null = v1[:, r1:]                                                        # [HW, HW − r1]
    wd = dense_operator(conv, in_shape)                                      # [rows, n]
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
    return LayerSolution(name, n, wd.shape[0], cout * c * d1.shape[0] // cout, c * r1, rank, cond,
                         float(max(res_w, res_g)), x)


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
        for _ in range(80):   # golden-section refinement
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


# ---------------------------------------------------------------------------------------------------
# Whole-model analysis
# ---------------------------------------------------------------------------------------------------
@dataclass
class LayerAnalysis:
    """Unknowns vs constraints of one layer; ``exact`` says whether ``rank`` is numerical or a bound."""

    name: str
    type: str
    in_shape: list[int]
    out_shape: list[int]
    unknowns: int
    weight_rows: int
    weight_rows_usable: int
    gradient_rows: int
    rank_gradient: int
    rank_gradient_exact: bool
    rank: int
    exact: bool
    counting_bound: int
    dominant: str
    weight_path: str
    condition: float | None = None

    @property
    def deficiency(self) -> int:
        return self.rank - self.unknowns

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "deficiency": self.deficiency}


@dataclass
class ModelAnalysis:
    model: str
    input_shape: list[int]
    num_classes: int
    layers: list[LayerAnalysis] = field(default_factory=list)
    rtol: float = RANK_RTOL
    exact_limit: int = 0
    seconds: float = 0.0

    @property
    def copa_index(self) -> int:
        return copa_index([l.deficiency for l in self.layers])

    @property
    def rgap_rank_index(self) -> int:
        return sum(l.unknowns - l.rank for l in self.layers)

    @property
    def exact(self) -> bool:
        return all(l.exact for l in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "input_shape": self.input_shape, "num_classes": self.num_classes,
            "copa_index": self.copa_index, "rgap_rank_index": self.rgap_rank_index,
            "all_exact": self.exact,
            "note": ("copa_index = Σ_{l<L-1} round(def_l·(L−1−l)/(L−1)) with def_l = rank − unknowns "
                     "(Chen & Campbell's code; 0 = every layer determined, more negative = safer); "
                     "rgap_rank_index = Σ_l (unknowns − rank) (ours). Where 'exact' is false the rank is an "
                     "upper bound, so the deficiency shown is the least possible and the true indices are "
                     "at least as safe."),
            "rtol": self.rtol, "exact_limit": self.exact_limit, "seconds": self.seconds,
            "layers": [l.to_json() for l in self.layers],
        }


def copa_index(deficiencies: list[int]) -> int:
    """Chen & Campbell's weighted sum of per-layer deficiencies, input side weighted most."""
    big_l = len(deficiencies)
    if big_l < 2:
        return 0
    return int(sum(round(d * (big_l - 1 - i) / (big_l - 1)) for i, d in enumerate(deficiencies[:-1])))


def _weight_path(gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, Any]
                 ) -> tuple[Tensor | None, Tensor | None, str]:
    """Which output rows of an affine node the attacker reads back from the next layer's input.
    Returns (row mask over the flattened output or None for all, BatchNorm-train output values or
    None, a description)."""
    out = values[node][0]
    mask = torch.ones(out.numel(), dtype=torch.bool)
    bn_vals = None
    steps = []
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return torch.zeros_like(mask), None, " → ".join(steps + ["branch (rows unreadable)"])
        nxt = users[0]
        if nxt.op == "output":
            return mask, bn_vals, " → ".join(steps + ["output"])
        op = _classify(gm, nxt)
        if op.kind == "affine":
            return mask, bn_vals, " → ".join(steps + ["next layer"]) if steps else "next layer"
        if op.kind in ("invertible", "reshape"):
            steps.append(op.what)
        elif op.kind == "relu":
            mask &= (values[nxt][0].flatten() > 0) if values[nxt][0].numel() == mask.numel() else mask
            steps.append("relu (active units only)")
        elif op.kind == "batchnorm_train" and bn_vals is None:
            bn_vals = values[nxt][0].detach().to(DTYPE)
            steps.append("batchnorm-train (−2 per channel)")
        else:
            return torch.zeros_like(mask), None, " → ".join(steps + [f"{op.what} (rows unreadable)"])
        cur = nxt


def _project_bn(a: Tensor, rows: Tensor, bn_vals: Tensor) -> Tensor:
    """Remove, per channel, the span of {1, BN output} from the readable rows of ``a``."""
    c = bn_vals.shape[0]
    per = bn_vals[0].numel()
    chan = rows // per
    out = []
    for k in range(c):
        sel = chan == k
        if int(sel.sum()) <= 2:
            continue
        basis = torch.stack([torch.ones(int(sel.sum()), dtype=DTYPE), bn_vals.flatten()[rows[sel]]], 1)
        q, _ = torch.linalg.qr(basis)
        block = a[sel]
        out.append(block - q @ (q.T @ block))
    return torch.cat(out) if out else a[:0]


def analyze_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, *, name: str = "",
                  exact_limit: int = 6000, rtol: float = RANK_RTOL, seed: int = 0,
                  probe: Tensor | None = None, label: int = 0) -> ModelAnalysis:
    """Per-layer unknowns, constraints and ranks at one sample's gradient (``probe``, default a seeded
    standard-normal input), for every Linear/Conv2d in forward order.

    ``exact_limit``: the largest number of columns of a reduced system whose rank is computed
    numerically; larger layers get counting bounds (``exact = False``)."""
    import time

    t0 = time.perf_counter()
    gm = symbolic_trace(model)
    if probe is None:
        probe = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(seed))
    rec = _Recorder(gm, retain=True)
    out = rec.run(probe)
    loss = F.cross_entropy(out, torch.tensor([label % num_classes]))
    grads = torch.autograd.grad(loss, [v for n, v in rec.values.items() if _is_affine(gm, n)],
                                allow_unused=True)
    affine = [n for n in rec.values if _is_affine(gm, n)]
    deltas = dict(zip(affine, grads))
    res = ModelAnalysis(name or type(model).__name__, list(input_shape), num_classes, rtol=rtol,
                        exact_limit=exact_limit)
    for node in affine:
        m = gm.get_submodule(node.target)
        x_in = rec.values[node.args[0]]
        delta = deltas[node]
        if delta is None:
            delta = torch.zeros_like(rec.values[node])
        res.layers.append(_analyze_layer(gm, node, m, tuple(x_in.shape[1:]), delta[0].detach(), rec.values,
                                         exact_limit, rtol))
    res.seconds = time.perf_counter() - t0
    return res


def _is_affine(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Linear, nn.Conv2d))


def _analyze_layer(gm: fx.GraphModule, node: fx.Node, m: nn.Module, in_shape: tuple[int, ...], delta: Tensor,
                   values: dict[fx.Node, Any], exact_limit: int, rtol: float) -> LayerAnalysis:
    n = math.prod(in_shape)
    out_shape = tuple(values[node].shape[1:])
    rows = math.prod(out_shape)
    mask, bn_vals, path = _weight_path(gm, node, values)
    usable = int(mask.sum()) - (2 * out_shape[0] if bn_vals is not None else 0)
    usable = max(usable, 0)
    if isinstance(m, nn.Linear):
        grad_rows = m.weight.numel()
        rg = n if float(delta.abs().max()) > 0 else 0
        return LayerAnalysis(str(node.target), "Linear", list(in_shape), list(out_shape), n, rows, usable,
                             grad_rows, rg, True, rg, True, min(n, grad_rows + usable),
                             "gradient" if rg == n else "neither", path, 1.0 if rg else None)
    c, h, w = in_shape
    cout = m.out_channels
    k2 = m.kernel_size[0] * m.kernel_size[1]
    n_p = out_shape[1] * out_shape[2]
    grad_rows = cout * c * k2
    r1_max = min(cout * k2, h * w)
    bound = min(n, c * r1_max + usable, cout * (c * k2 + n_p - cout) if cout <= min(c * k2, n_p) else n)
    exact_r1 = h * w * k2 * n_p <= 6e7
    cond = None
    if exact_r1:
        d1 = conv_gradient_operator(delta, (h, w), m)
        s1, v1 = _gram_svd(d1)
        r1 = _rank(s1, rtol)
        rank_g = c * r1
        null_cols = c * (h * w - r1)
        rank = rank_g
        exact = True
        if null_cols and usable:
            if null_cols <= exact_limit and rows * n <= 4e7:
                wd = dense_operator(m, in_shape)
                sel = torch.nonzero(mask).flatten()
                a = torch.einsum("rcq,qk->rck", wd.view(-1, c, h * w), v1[:, r1:]).reshape(rows, -1)[sel]
                if bn_vals is not None:
                    a = _project_bn(a, sel, bn_vals)
                rank += _rank(_svals(a), rtol)
            else:
                rank = min(n, rank_g + usable, null_cols + rank_g)
                exact = False
        rank = min(rank, bound) if exact is False else rank
    else:
        rank_g = c * r1_max
        rank = bound
        exact = False
    dominant = "gradient" if rank_g >= rank - rank_g else "weight"
    if rank_g >= n:
        dominant = "gradient alone"
    return LayerAnalysis(str(node.target), "Conv2d", list(in_shape), list(out_shape), n, rows, usable, grad_rows,
                         rank_g, exact_r1, rank, exact, bound, dominant, path, cond)
