"""Models: the zoo, a registry, the user's own factories and weights, and finding the head by name."""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UnsafeFileError
from .zoo import MODELS, ConvNet, LeNet, MLP, ResNet
from . import rgap as _rgap  # noqa: F401  (registers cnn6, cnn6-d, fcn3, twolayer)

__all__ = ["MODELS", "ModelSpec", "build_model", "load_weights", "save_weights", "find_head",
           "ConvNet", "LeNet", "MLP", "ResNet"]


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild an architecture: a zoo name or ``module:factory``, plus its arguments."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(self.name, self.num_classes, self.input_shape, **self.kwargs)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "kwargs": dict(self.kwargs)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(d["name"], int(d["num_classes"]), tuple(d["input_shape"]), dict(d.get("kwargs", {})))


def build_model(name: str, num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, or call the user's ``module:factory(num_classes, input_shape, **kw)``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"cannot load model factory {name!r}: {e}") from None
        model = factory(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
        if not isinstance(model, nn.Module):
            raise InputError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    return MODELS.get(name)(num_classes, tuple(input_shape), **kwargs)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` (strict). Pickle files are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix in {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}:
        raise UnsafeFileError(f"{path}: pickle-based weight files can run code when loaded and are refused; "
                              "convert them once with safetensors.torch.save_file(model.state_dict(), 'w.safetensors')")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise InputError(f"cannot read weights {path}: {e}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("wrong shape " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]))
        raise InputError(f"weights {path} do not fit the model: " + "; ".join(parts))
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
    cands = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)
             and (num_classes is None or m.out_features == num_classes)]
    if len(cands) != 1:
        raise InputError(f"cannot tell the model's classification head ({len(cands)} candidate nn.Linear layers); "
                         "name it with head='module.path' or a 'head_name' attribute on the model")
    return cands[0]
