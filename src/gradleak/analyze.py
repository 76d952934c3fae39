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

The tracing (:mod:`gradleak.attacks.analytic.trace`) and the linear algebra
(:mod:`gradleak.attacks.analytic.linalg`) are those of the analytic attacks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks.analytic.fc import first_linear_layer
from .attacks.analytic.linalg import (
    DTYPE,
    RANK_RTOL,
    conv_gradient_operator,
    dense_operator,
    gram_svd,
    numerical_rank,
    singular_values,
)
from .attacks.analytic.trace import Recorder, classify_node, is_affine, symbolic_trace

__all__ = ["BatchRecovery", "LayerAnalysis", "ModelAnalysis", "analyze_model", "batch_recovery", "copa_index"]

#: what the batch attacks' benchmarks measured on this project's 2-core CPU (quoted beside the algebraic limit)
MEASURED = {
    "analytic_fc": "exact at B = 1; in a batch only samples alone in a ReLU unit (benchmarks/analytic)",
    "spear": "exact in 60/60 batches at B = 4–16, B = 20 in 21 s, B = 24 refused at the default sample "
    "budget (benchmarks/spear)",
    "cocktail-spear": "photos every image exact (≥ 60 dB) at B = 16, 32, 64, under 4-client secure aggregation and "
    "for FedAvg deltas, ≤ 35 s a batch; Fashion-MNIST at B = 128 and 256 no sample found (benchmarks/cocktail)",
    "cocktail": "photos mean PSNR 24.2 dB at B = 16, 19.5 dB at B = 64 (also under 4-client secure aggregation), "
    "Fashion-MNIST 9.9 dB at B = 256 (benchmarks/cocktail)",
}


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
    batch_recovery: list[BatchRecovery] = field(default_factory=list)
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
            "model": self.model,
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "copa_index": self.copa_index,
            "rgap_rank_index": self.rgap_rank_index,
            "all_exact": self.exact,
            "note": (
                "copa_index = Σ_{l<L-1} round(def_l·(L−1−l)/(L−1)) with def_l = rank − unknowns "
                "(Chen & Campbell's code; 0 = every layer determined, more negative = safer); "
                "rgap_rank_index = Σ_l (unknowns − rank) (ours). Where 'exact' is false the rank is an "
                "upper bound, so the deficiency shown is the least possible and the true indices are "
                "at least as safe."
            ),
            "rtol": self.rtol,
            "exact_limit": self.exact_limit,
            "seconds": self.seconds,
            "layers": [l.to_json() for l in self.layers],
            "batch_recovery": [b.to_json() for b in self.batch_recovery],
        }


@dataclass(frozen=True)
class BatchRecovery:
    """Worst case for a batch: whether an analytic batch attack applies to the model's first layer and the
    largest batch its algebra allows (``max_batch``); ``measured`` quotes its benchmark."""

    attack: str
    applies: bool
    layer: str | None
    max_batch: int | None
    reason: str
    measured: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def batch_recovery(model: nn.Module) -> list[BatchRecovery]:
    """Which of the batch attacks (``analytic_fc``, ``spear``, ``cocktail-spear``, ``cocktail``) the model's first
    layer admits and up to which batch size — the conditions their ``problems()`` check, read from the architecture
    alone."""
    name, after, problems = first_linear_layer(model)
    if name is None:
        why = problems[0] if problems else "no first fully connected layer"
        return [BatchRecovery(a, False, None, None, why, MEASURED[a]) for a in MEASURED]
    lin = cast(nn.Linear, model.get_submodule(name))
    m, d, bias = lin.out_features, lin.in_features, lin.bias is not None
    relu = after == "relu"
    no_bias = f"{name} has no bias: the scale of each input is not determined"
    spear_needs = f"rank-B gradient of a Linear({d}→{m}) + ReLU: B < {m} units and B ≤ {d} inputs"
    spear_missing = no_bias if not bias else f"{name} is followed by {after}, not a ReLU"
    return [
        BatchRecovery(
            "analytic_fc",
            bias,
            name,
            1 if bias else None,
            (
                "B = 1 exact; batches need a ReLU after the layer"
                if not relu
                else "B = 1 exact; in a batch, samples alone in some ReLU unit"
            )
            if bias
            else no_bias,
            MEASURED["analytic_fc"],
        ),
        BatchRecovery(
            "spear",
            bias and relu,
            name,
            min(m - 1, d) if bias and relu else None,
            (f"{spear_needs}; the sampling cost doubles with every sample" if bias and relu else spear_missing),
            MEASURED["spear"],
        ),
        BatchRecovery(
            "cocktail-spear",
            bias and relu,
            name,
            min(m - 1, d) if bias and relu else None,
            (f"{spear_needs}; ICA estimates, not random draws, propose each sample's ReLU zeros")
            if bias and relu
            else spear_missing,
            MEASURED["cocktail-spear"],
        ),
        BatchRecovery(
            "cocktail",
            True,
            name,
            min(m, d),
            f"the {m} rows of ∇W mix the B inputs: B ≤ {min(m, d)} independent sources",
            MEASURED["cocktail"],
        ),
    ]


def copa_index(deficiencies: list[int]) -> int:
    """Chen & Campbell's weighted sum of per-layer deficiencies, input side weighted most."""
    big_l = len(deficiencies)
    if big_l < 2:
        return 0
    return int(sum(round(d * (big_l - 1 - i) / (big_l - 1)) for i, d in enumerate(deficiencies[:-1])))


def _weight_path(gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, Any]) -> tuple[Tensor, Tensor | None, str]:
    """Which output rows of an affine node the attacker reads back from the next layer's input.
    Returns (row mask over the flattened output, BatchNorm-train output values or None, a description)."""
    out = values[node][0]
    mask = torch.ones(out.numel(), dtype=torch.bool)
    bn_vals = None
    steps: list[str] = []
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return torch.zeros_like(mask), None, " → ".join(steps + ["branch (rows unreadable)"])
        nxt = users[0]
        if nxt.op == "output":
            return mask, bn_vals, " → ".join(steps + ["output"])
        op = classify_node(gm, nxt)
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


def analyze_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    name: str = "",
    exact_limit: int = 6000,
    rtol: float = RANK_RTOL,
    seed: int = 0,
    probe: Tensor | None = None,
    label: int = 0,
) -> ModelAnalysis:
    """Per-layer unknowns, constraints and ranks at one sample's gradient (``probe``, default a seeded
    standard-normal input), for every Linear/Conv2d in forward order.

    ``exact_limit``: the largest number of columns of a reduced system whose rank is computed
    numerically; larger layers get counting bounds (``exact = False``)."""
    import time

    t0 = time.perf_counter()
    gm = symbolic_trace(model)
    if probe is None:
        probe = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(seed))
    rec = Recorder(gm, retain=True)
    out = rec.run(probe)
    loss = F.cross_entropy(out, torch.tensor([label % num_classes]))
    grads = torch.autograd.grad(loss, [v for n, v in rec.values.items() if is_affine(gm, n)], allow_unused=True)
    affine = [n for n in rec.values if is_affine(gm, n)]
    deltas = dict(zip(affine, grads))
    res = ModelAnalysis(
        name or type(model).__name__, list(input_shape), num_classes, rtol=rtol, exact_limit=exact_limit
    )
    for node in affine:
        m = cast("nn.Linear | nn.Conv2d", gm.get_submodule(str(node.target)))  # is_affine
        x_in = rec.values[cast(fx.Node, node.args[0])]
        delta = deltas[node]
        if delta is None:
            delta = torch.zeros_like(rec.values[node])
        res.layers.append(
            _analyze_layer(gm, node, m, tuple(x_in.shape[1:]), delta[0].detach(), rec.values, exact_limit, rtol)
        )
    res.batch_recovery = batch_recovery(model)
    res.seconds = time.perf_counter() - t0
    return res


def _analyze_layer(
    gm: fx.GraphModule,
    node: fx.Node,
    m: nn.Linear | nn.Conv2d,
    in_shape: tuple[int, ...],
    delta: Tensor,
    values: dict[fx.Node, Any],
    exact_limit: int,
    rtol: float,
) -> LayerAnalysis:
    n = math.prod(in_shape)
    out_shape = tuple(values[node].shape[1:])
    rows = math.prod(out_shape)
    mask, bn_vals, path = _weight_path(gm, node, values)
    usable = int(mask.sum()) - (2 * out_shape[0] if bn_vals is not None else 0)
    usable = max(usable, 0)
    if isinstance(m, nn.Linear):
        grad_rows = m.weight.numel()
        rg = n if float(delta.abs().max()) > 0 else 0
        return LayerAnalysis(
            str(node.target),
            "Linear",
            list(in_shape),
            list(out_shape),
            n,
            rows,
            usable,
            grad_rows,
            rg,
            True,
            rg,
            True,
            min(n, grad_rows + usable),
            "gradient" if rg == n else "neither",
            path,
            1.0 if rg else None,
        )
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
        s1, v1 = gram_svd(d1)
        r1 = numerical_rank(s1, rtol)
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
                rank += numerical_rank(singular_values(a), rtol)
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
    return LayerAnalysis(
        str(node.target),
        "Conv2d",
        list(in_shape),
        list(out_shape),
        n,
        rows,
        usable,
        grad_rows,
        rank_g,
        exact_r1,
        rank,
        exact,
        bound,
        dominant,
        path,
        cond,
    )
