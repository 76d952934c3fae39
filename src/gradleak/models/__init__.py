"""Models: the zoo, a registry, the user's own factories and weights, and finding the head by name."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from . import rgap as _rgap  # noqa: F401  (registers cnn6, cnn6-d, fcn3, twolayer)
from .first_layer import input_linear
from .zoo import MLP, MODELS, ConvNet, LeNet, ResNet

__all__ = [
    "MODELS",
    "ModelSpec",
    "architecture_hash",
    "build_model",
    "load_weights",
    "save_weights",
    "find_head",
    "input_linear",
    "ConvNet",
    "LeNet",
    "MLP",
    "ResNet",
]


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild an architecture: a zoo name or ``module:factory``, plus its arguments."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(self.name, self.num_classes, self.input_shape, **self.kwargs)

    @property
    def is_zoo(self) -> bool:
        """True for a registered zoo model (a file may name it); False for a user's ``module:factory``."""
        return self.name in MODELS

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "kwargs": dict(self.kwargs),
        }


def architecture_hash(model: nn.Module, head: str | None) -> str:
    """SHA-256 of an architecture as a file records it: every state entry's name, shape and dtype
    (parameters and persistent buffers) and the head's name. Equal hashes: the same layout of weights."""
    layout = [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
    return hashlib.sha256(json.dumps({"state": layout, "head": head}).encode()).hexdigest()


def build_model(name: str, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, or call the user's ``module:factory(num_classes, input_shape, **kw)``.

    ``name`` imports code when it is ``module:factory``: pass only names the user gave, never one read
    from a file."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not (attr.isidentifier() and all(part.isidentifier() for part in module_name.split("."))):
            raise InputError(f"model {name!r}: expected a zoo name or module:factory, e.g. mypackage.nets:make_net")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"cannot load model factory {name!r}: {e}") from None
    else:
        factory = MODELS.get(name)
    try:
        model = factory(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    except (TypeError, RuntimeError) as e:  # an argument it does not take, a negative layer size, ...
        raise InputError(f"cannot build model {name!r} with {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    if any(p.numel() == 0 for p in model.parameters()):
        raise InputError(f"model {name!r} with {kwargs} has a layer without units; check its size arguments")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` (strict). Pickle files are refused; a file that does
    not fit (missing, unexpected or wrongly shaped entries, NaN or inf) raises one InputError listing all."""
    from ..schema import Problems, finite_problems, read_safetensors, shape_problems, state_shapes

    f = read_safetensors(path, None, "weights file")
    problems = Problems(shape_problems(f.shapes, state_shapes(model)))
    problems.raise_if_any(f"weights {path} do not fit the model")
    state = f.tensors()
    problems += finite_problems(state)
    problems.raise_if_any(f"weights {path} are not usable")
    model.load_state_dict(state)
    return model


def save_weights(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))


def find_head(model: nn.Module, num_classes: int | None = None, name: str | None = None) -> tuple[str, nn.Linear]:
    """The classification head: ``name``, else the model's ``head_name``, else the one ``nn.Linear``
    with ``num_classes`` outputs. Raises if it is missing or ambiguous."""
    name = name or getattr(model, "head_name", None)
    modules = dict(model.named_modules())
    if name is not None:
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            raise InputError(f"the model has no nn.Linear named {name!r} to use as its head")
        return name, mod
    cands = [
        (n, m)
        for n, m in modules.items()
        if isinstance(m, nn.Linear) and (num_classes is None or m.out_features == num_classes)
    ]
    if len(cands) != 1:
        raise InputError(
            f"cannot tell the model's classification head ({len(cands)} candidate nn.Linear layers); "
            "name it with head='module.path' or a 'head_name' attribute on the model"
        )
    return cands[0]
