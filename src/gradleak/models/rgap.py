"""Networks of the analytic-attack papers — Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on
Privacy", ICLR 2021, arXiv:2010.07733 (CNN6, CNN6-d, FCN3); Wang, Lee & Lei, "Reconstructing Training
Data from Model Gradient, Provably", AISTATS 2023, arXiv:2212.03714 (two-layer net at random Gaussian
parameters).

R-GAP's networks end in one logit with a logistic loss; here the head has ``num_classes`` outputs and
the client's loss is the usual cross-entropy (the layer-wise attack recovers the head's error vector
from the rank-one head gradient, PAPERS.md §3). Layer sizes follow the paper's code for 32×32×3 inputs
and scale with ``input_shape``:

- ``cnn6``: conv 3→12 (k4 s2 p2), 12→36 (k3 s2 p1), 36→36 (k3 s1 p1) ×2, 36→64 (k3 s2 p1),
  64→128 (k3 s1 p1), linear → classes; LeakyReLU(0.2), no biases, no pooling. Every layer satisfies
  R-GAP's rank condition at 32×32.
- ``cnn6-d``: the same with 20 channels after conv2; conv2's input is then under-determined.
- ``fcn3``: flatten → 1000 → 100 → classes, LeakyReLU(0.2), no biases.
- ``twolayer``: flatten → ``width`` hidden units (no bias) → activation → classes (no bias), weights
  drawn ``W ~ N(0, 1/d)`` and ``a ~ N(0, 1/width)`` — a "random Gaussian" point for the tensor attack.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from .zoo import MODELS, flat_size

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "identity": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise InputError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class CNN6(nn.Module):
    """R-GAP's CNN6 (``width2=36``) and CNN6-d (``width2=20``): six stride/padding convolutions without
    pooling or biases, LeakyReLU(0.2), a linear head; ``activation`` and ``bias`` may be changed."""

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        width2: int = 36,
        activation: str = "leaky_relu",
        bias: bool = False,
    ):
        super().__init__()
        c = input_shape[0]
        spec = [
            (c, 12, 4, 2, 2),
            (12, width2, 3, 2, 1),
            (width2, 36, 3, 1, 1),
            (36, 36, 3, 1, 1),
            (36, 64, 3, 2, 1),
            (64, 128, 3, 1, 1),
        ]
        layers: list[tuple[str, nn.Module]] = []
        for i, (cin, cout, k, s, p) in enumerate(spec):
            layers.append((f"conv{i + 1}", nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=bias)))
            layers.append((f"act{i + 1}", _activation(activation)))
        layers.append(("flatten", nn.Flatten()))
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(flat_size(self.body, input_shape), num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FCN3(nn.Module):
    """R-GAP's FCN3: flatten → 1000 → 100 → head, LeakyReLU(0.2), no biases."""

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        widths: Sequence[int] = (1000, 100),
        activation: str = "leaky_relu",
        bias: bool = False,
    ):
        super().__init__()
        d = math.prod(input_shape)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i, w in enumerate(widths):
            layers += [(f"fc{i + 1}", nn.Linear(d, w, bias=bias)), (f"act{i + 1}", _activation(activation))]
            d = w
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(d, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TwoLayerNet(nn.Module):
    """``f(x) = A σ(W x)`` with ``W ~ N(0, 1/d)``, ``A ~ N(0, 1/width)`` (Wang, Lee & Lei 2023's setting;
    the scale 1/d keeps ``Wx`` of order one for standardised inputs). ``gaussian=False`` keeps
    PyTorch's default uniform initialisation (outside the tensor attack's conditions)."""

    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        width: int = 1000,
        activation: str = "tanh",
        gaussian: bool = True,
        hidden_bias: bool = False,
    ):
        super().__init__()
        d = math.prod(input_shape)
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(d, width, bias=hidden_bias)
        self.act = _activation(activation)
        self.head = nn.Linear(width, num_classes, bias=False)
        if gaussian:
            with torch.no_grad():
                self.hidden.weight.normal_(0.0, 1.0 / math.sqrt(d))
                self.head.weight.normal_(0.0, 1.0 / math.sqrt(width))
                if hidden_bias:
                    self.hidden.bias.normal_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(self.flatten(x))))


@MODELS.register("cnn6")
def cnn6(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return CNN6(num_classes, input_shape, **kw)


@MODELS.register("cnn6-d")
def cnn6_d(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    kw.setdefault("width2", 20)
    return CNN6(num_classes, input_shape, **kw)


@MODELS.register("fcn3")
def fcn3(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return FCN3(num_classes, input_shape, **kw)


@MODELS.register("twolayer")
def twolayer(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return TwoLayerNet(num_classes, input_shape, **kw)
