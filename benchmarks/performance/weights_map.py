"""Load another codebase's weights into a gradleak model by order and shape (its parameter names differ).

breaching's ConvNet names its layers ``model.model.conv0`` …, its CIFAR ResNet-18 ``model.stem.0``,
``model.layers.0.0.conv1`` …; gradleak's are ``body.conv0`` … and torchvision's ``conv1``, ``layer1.0.conv1``
…. Both define the same layers in the same order, so the i-th parameter (and the i-th buffer) of one is
the i-th of the other. :func:`load_by_order` pairs them so, refuses any count or shape mismatch, and
returns the name pairs; the caller then checks equal outputs on one input (``side_by_side.py`` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


class MappingError(ValueError):
    """The source tensors do not line up with the model's parameters or buffers."""


def load_by_order(
    model: nn.Module,
    params: list[Tensor],
    buffers: list[Tensor] | None,
    source_param_names: list[str] | None = None,
    source_buffer_names: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Copy ``params`` (and ``buffers``, if given) into ``model`` in ``named_parameters()`` /
    ``named_buffers()`` order. Returns ``[(source_name, model_name), ...]``; raises
    :class:`MappingError` listing every count or shape mismatch."""
    own_p = list(model.named_parameters())
    own_b = list(model.named_buffers()) if buffers is not None else []
    src_pn = source_param_names or [f"param.{i}" for i in range(len(params))]
    src_bn = source_buffer_names or [f"buffer.{i}" for i in range(len(buffers or []))]
    problems = []
    for kind, own, src, names in (("parameters", own_p, params, src_pn), ("buffers", own_b, buffers or [], src_bn)):
        if len(own) != len(src):
            problems.append(f"{len(src)} source {kind}, the model has {len(own)}")
            continue
        for (name, t), s, sname in zip(own, src, names):
            if tuple(t.shape) != tuple(s.shape):
                problems.append(f"{sname} {tuple(s.shape)} -> {name} {tuple(t.shape)}")
    if problems:
        raise MappingError("weights do not map by order: " + "; ".join(problems))
    pairs = []
    with torch.no_grad():
        for (name, t), s, sname in zip(own_p, params, src_pn):
            t.copy_(s.to(t.dtype))
            pairs.append((sname, name))
        for (name, t), s, sname in zip(own_b, buffers or [], src_bn):
            t.copy_(s.to(t.dtype))
            pairs.append((sname, name))
    return pairs


@dataclass
class ExportedCase:
    """What ``breaching_side.py`` exported: the case as breaching ran it, and its reconstructions."""

    images01: Tensor  # [B, C, H, W] in [0, 1], the harness's pixels, in the user's order
    labels: Tensor  # int64 [B]
    user_inputs: Tensor  # normalised inputs the user fed the model
    logits: Tensor  # the user's model on user_inputs
    params: list[Tensor]  # what the server sent, parameters() order
    buffers: list[Tensor]
    grads: list[Tensor]  # the gradient the user shared, parameters() order
    final: Tensor  # breaching's reconstruction, model space
    snapshots: Tensor | None  # [K, B, C, H, W] candidates during the run, model space
    meta: dict

    @classmethod
    def read(cls, path: str | Path) -> ExportedCase:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
            keys = set(f.keys())
            t = {k: f.get_tensor(k) for k in keys}
        meta = {}
        for k, v in raw.items():
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError:
                meta[k] = v

        def series(prefix: str) -> list[Tensor]:
            n = sum(1 for k in keys if k.startswith(prefix + "."))
            return [t[f"{prefix}.{i}"] for i in range(n)]

        return cls(
            t["images01"],
            t["labels"],
            t["user_inputs"],
            t["logits"],
            series("param"),
            series("buffer"),
            series("grad"),
            t["final"],
            t.get("snapshots"),
            meta,
        )
