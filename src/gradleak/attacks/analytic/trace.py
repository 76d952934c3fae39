"""Tracing a model into the chain of layers the analytic methods work on (``torch.fx``): every node is
classified as an affine layer (Linear/Conv2d), an invertible element-wise op (with its inverse and
derivative), a reshape, a ReLU, a pooling, a train-mode BatchNorm or something else."""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from .linalg import DTYPE

__all__ = ["Op", "Recorder", "classify_node", "is_affine", "symbolic_trace", "trace_chain"]


@dataclass
class Op:
    """One node of a traced model. ``kind``: ``affine`` (Linear/Conv2d), ``invertible`` (element-wise,
    invertible), ``reshape``, ``relu``, ``pool``, ``batchnorm_train`` or ``other``."""

    name: str
    kind: str
    what: str
    module: nn.Module | None = None
    slope: float | None = None  # LeakyReLU slope
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    def layer(self) -> nn.Linear | nn.Conv2d:
        """The module of an ``affine`` op."""
        assert isinstance(self.module, (nn.Linear, nn.Conv2d)), f"{self.name} is not affine"
        return self.module

    # -- element-wise inverse and derivative (kind == "invertible") ----------------------------------
    def inverse(self, y: Tensor) -> Tensor:
        """The pre-activation ``z`` with ``σ(z) = y``."""
        w = self.what
        if w in ("identity", "dropout"):
            return y
        if w == "leaky_relu":
            return torch.where(y > 0, y, y / self._slope())
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
            return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self._slope()))
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

    def _slope(self) -> float:
        assert self.slope is not None  # classify_node sets it for every leaky_relu
        return self.slope

    def _bn(self) -> tuple[Tensor, ...]:
        m = self.module
        # classify_node: batchnorm_eval is a BatchNorm with running statistics
        assert isinstance(m, nn.modules.batchnorm._BatchNorm)
        assert m.running_mean is not None and m.running_var is not None
        c = m.num_features
        shape = (c,) + (1,) * (len(self.in_shape) - 1)
        g = (m.weight if m.weight is not None else torch.ones(c)).detach().to(DTYPE).view(shape)
        b = (m.bias if m.bias is not None else torch.zeros(c)).detach().to(DTYPE).view(shape)
        mu = m.running_mean.detach().to(DTYPE).view(shape)
        sd = (m.running_var.detach().to(DTYPE) + m.eps).sqrt().view(shape)
        return g, b, mu, sd


_INVERTIBLE_MODULES: dict[type, str] = {
    nn.Identity: "identity",
    nn.LeakyReLU: "leaky_relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Softplus: "softplus",
}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_ELEMENTWISE_FUNCS: dict[Any, str] = {
    torch.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.leaky_relu: "leaky_relu",
    F.softplus: "softplus",
    torch.relu: "relu",
    F.relu: "relu",
}


def classify_node(gm: fx.GraphModule, node: fx.Node) -> Op:
    """The :class:`Op` a traced node performs (its kind decides how the analytic methods treat it)."""
    name = str(node.target)
    if node.op == "call_module":
        m = gm.get_submodule(name)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return Op(name, "affine", type(m).__name__, m)
        if type(m) in _INVERTIBLE_MODULES:
            what = _INVERTIBLE_MODULES[type(m)]
            if isinstance(m, nn.LeakyReLU) and m.negative_slope <= 0:
                return Op(name, "relu", "LeakyReLU with slope <= 0 (not invertible)", m)
            if isinstance(m, nn.Softplus) and (m.beta != 1 or m.threshold < 20):
                return Op(name, "other", "Softplus with beta != 1", m)
            return Op(name, "invertible", what, m, slope=getattr(m, "negative_slope", None))
        if isinstance(m, nn.Dropout):
            return Op(
                name,
                "invertible" if not m.training else "other",
                "dropout" if not m.training else "Dropout in train mode (random mask)",
                m,
            )
        if isinstance(m, nn.Flatten):
            return Op(name, "reshape", "flatten", m)
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return Op(name, "relu", type(m).__name__, m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or m.running_mean is None:
                return Op(name, "batchnorm_train", type(m).__name__ + " (batch statistics)", m)
            return Op(name, "invertible", "batchnorm_eval", m)
        if isinstance(
            m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.AvgPool1d)
        ):
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
                if not isinstance(slope, (int, float)):
                    return Op("leaky_relu", "other", "leaky_relu with a computed slope")
                return Op("leaky_relu", "invertible", what, slope=float(slope))
            return Op(getattr(node.target, "__name__", name), "invertible", what)
        if node.target in (operator.add, torch.add, operator.iadd, torch.cat):
            return Op(getattr(node.target, "__name__", name), "other", "residual sum / concatenation")
        if node.target in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
            return Op(node.target.__name__, "pool", node.target.__name__)
    return Op(name, "other", f"{node.op} {getattr(node.target, '__name__', node.target)}")


#: the last trace of each model, with the module structure it was traced from (see :func:`symbolic_trace`)
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], fx.GraphModule]] = weakref.WeakKeyDictionary()


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with untraceable models reported as :class:`InputError`.

    The graph is kept for the model while its modules (names, types, objects and train/eval modes, which a forward
    may branch on) stay the same, so the several analytic attacks that inspect one model trace it once; the graph
    shares the model's modules, so weights loaded into them later are the graph's weights too. Treat the graph as
    read-only."""
    structure = tuple((name, type(m), id(m), m.training) for name, m in model.named_modules())
    kept = _TRACES.get(model)
    if kept is not None and kept[0] == structure:
        return kept[1]
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code; report it as a user error
        raise InputError(
            f"cannot trace the model with torch.fx ({type(e).__name__}: {e}); the analytic "
            "methods need a model without data-dependent control flow"
        ) from None
    _TRACES[model] = (structure, gm)
    return gm


class Recorder(fx.Interpreter):
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
    rec = Recorder(gm, retain=False)
    modes = {m: m.training for m in gm.modules()}
    try:  # eval mode: shapes only, and BatchNorm accepts one 1×1 sample
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
            problems.append(
                f"the output of {node.name} feeds {len(users)} operations (a branch or residual "
                "connection); the layer-by-layer inversion needs a plain chain"
            )
            break
        node = users[0]
        if node.op == "output":
            break
        op = classify_node(gm, node)
        op.in_shape = shapes.get(node.args[0], ()) if node.args and isinstance(node.args[0], fx.Node) else ()
        op.out_shape = shapes.get(node, ())
        ops.append(op)
        if op.kind == "relu":
            problems.append(
                f"{op.name}: {op.what} is not invertible (its zeroed units lose the pre-activation); "
                "use LeakyReLU, sigmoid or tanh"
            )
        elif op.kind == "pool":
            problems.append(f"{op.name}: pooling ({op.what}) discards information the layer above cannot restore")
        elif op.kind == "batchnorm_train":
            problems.append(
                f"{op.name}: BatchNorm in train mode normalises by the sample's own statistics "
                "(two unknowns per channel); use eval mode or remove it"
            )
        elif op.kind == "other":
            problems.append(f"{op.name}: {op.what} is not supported by the layer-wise inversion")
        elif op.kind == "affine":
            m = op.module
            if isinstance(m, nn.Conv2d) and (
                m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str)
            ):
                problems.append(
                    f"{op.name}: only ungrouped, undilated, zero-padded convolutions with numeric padding are supported"
                )
    return ops, problems


def is_affine(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether node ``n`` calls a Linear or Conv2d module."""
    return n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), (nn.Linear, nn.Conv2d))
