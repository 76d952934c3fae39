"""The :class:`Observation`: exactly what an FL server sees from one client round, and nothing more.

The model (architecture + the parameters/buffers the server sent), the shared update (per-parameter
gradient for FedSGD, parameter delta for FedAvg), protocol metadata and the defenses that were
applied. The client's data and labels never live here. Saved as one safetensors file whose header
holds the JSON metadata — never pickle.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, UnsafeFileError
from .models import ModelSpec, find_head
from .normalization import Normalization
from .protocols import FedSGD, Protocol, protocol_from_json, stateless

FORMAT = "gradleak-observation-1"


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One client's round as the server sees it.

    Args:
        model: the architecture with the parameters the server sent; its train/eval mode is the
            mode the client trained in (it decides BatchNorm's behaviour).
        update: parameter name → gradient (``protocol.kind == "gradient"``) or delta θ_K − θ_0.
        protocol: :class:`~gradleak.protocols.FedSGD` or :class:`~gradleak.protocols.FedAvg` with the
            local steps / lr / batch the server knows (or assumes).
        num_classes, input_shape: the task's label count and one input's shape (C, H, W).
        batch_size: the number of client samples, if the server knows it.
        normalization: the input preprocessing the model expects (known to the server).
        defenses: records of the defenses applied to the update, in order (an adaptive attacker may
            model them).
        head: module path of the classification head (``nn.Linear``); found by name if not given.
        model_spec: how to rebuild the architecture, needed to :meth:`load` without the model.
    """

    model: nn.Module
    update: dict[str, Tensor]
    protocol: Protocol = field(default_factory=FedSGD)
    num_classes: int
    input_shape: tuple[int, ...]
    batch_size: int | None = None
    normalization: Normalization | None = None
    defenses: tuple[dict[str, Any], ...] = ()
    head: str | None = None
    model_spec: ModelSpec | None = None

    def __post_init__(self) -> None:
        if self.head is None:
            object.__setattr__(self, "head", find_head(self.model, self.num_classes)[0])
        self.check()

    # -- validation -------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise one :class:`InputError` listing every way the update does not fit the model."""
        problems: list[str] = []
        params = self.parameters()
        missing = sorted(set(params) - set(self.update))
        unknown = sorted(set(self.update) - set(params))
        if missing:
            problems.append(f"the update lacks {len(missing)} parameter(s) of the model, e.g. {missing[:3]}")
        if unknown:
            problems.append(f"the update has {len(unknown)} tensor(s) the model does not, e.g. {unknown[:3]}")
        for k in sorted(set(params) & set(self.update)):
            u = self.update[k]
            if tuple(u.shape) != tuple(params[k].shape):
                problems.append(f"{k}: update shape {tuple(u.shape)} != parameter shape {tuple(params[k].shape)}")
            elif not torch.isfinite(u).all():
                problems.append(f"{k}: the update contains NaN or inf")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        head = dict(self.model.named_modules()).get(self.head)
        if isinstance(head, nn.Linear) and head.out_features != self.num_classes:
            problems.append(f"head {self.head!r} has {head.out_features} outputs but num_classes is {self.num_classes}")
        if problems:
            raise InputError("the observation is inconsistent:\n" + "\n".join(f"  - {p}" for p in problems))

    # -- views ------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Tensor]:
        """The trainable parameters the server sent (detached)."""
        return {k: v.detach() for k, v in self.model.named_parameters() if v.requires_grad}

    @property
    def kind(self) -> str:
        return self.protocol.kind

    @property
    def bn_train(self) -> bool:
        """True if BatchNorm layers ran in train mode (batch statistics)."""
        return any(m.training for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def head_grads(self) -> tuple[Tensor, Tensor | None]:
        """The head's weight and bias entries of the update (bias ``None`` if the head has none)."""
        w = self.update[f"{self.head}.weight"]
        b = self.update.get(f"{self.head}.bias")
        return w, b

    def head_module(self) -> nn.Linear:
        return dict(self.model.named_modules())[self.head]  # type: ignore[return-value]

    def functional(self) -> tuple[nn.Module, dict[str, Tensor]]:
        """A :func:`~gradleak.protocols.stateless` copy of the model and its parameters, for replay."""
        net = stateless(self.model)
        return net, {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}

    def with_update(self, update: dict[str, Tensor], defense: dict[str, Any] | None = None) -> "Observation":
        """A copy with another update (e.g. after a defense), recording ``defense`` if given."""
        defenses = self.defenses + ((defense,) if defense else ())
        return replace(self, update=update, defenses=defenses)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "protocol": self.protocol.to_json(),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "normalization": None if self.normalization is None else self.normalization.to_json(),
            "defenses": list(self.defenses),
            "head": self.head,
            "model_spec": None if self.model_spec is None else self.model_spec.to_json(),
            "model_training": self.model.training,
            "bn_train": self.bn_train,
        }

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (model state + update, JSON metadata in its header), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"state.{k}": v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        tensors |= {f"update.{k}": v.detach().contiguous().cpu() for k, v in self.update.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"gradleak": json.dumps(self.metadata())})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Observation":
        """Read a file written by :meth:`save`. ``model`` is needed if it was saved without a spec."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.suffix in {".pt", ".pth", ".pkl", ".pickle", ".ckpt"}:
            raise UnsafeFileError(f"{path}: pickle files are refused; observations are .safetensors files")
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError) as e:
            raise InputError(f"cannot read observation {path}: {e}") from None
        if "gradleak" not in header:
            raise InputError(f"{path} is a safetensors file but not a gradleak observation (no metadata)")
        meta = json.loads(header["gradleak"])
        if meta.get("format") != FORMAT:
            raise InputError(f"{path}: unsupported observation format {meta.get('format')!r}")
        spec = None if meta["model_spec"] is None else ModelSpec.from_json(meta["model_spec"])
        if model is None:
            if spec is None:
                raise InputError(f"{path} was saved from a custom model without a spec; pass model=")
            model = spec.build()
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"{path}: the saved model state does not fit the model: {e}") from None
        model.train(meta["model_training"])
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(meta["bn_train"])
        update = {k[len("update."):]: v for k, v in tensors.items() if k.startswith("update.")}
        norm = meta.get("normalization")
        return cls(model=model, update=update, protocol=protocol_from_json(meta["protocol"]),
                   num_classes=int(meta["num_classes"]), input_shape=tuple(meta["input_shape"]),
                   batch_size=meta.get("batch_size"),
                   normalization=None if norm is None else Normalization.from_json(norm),
                   defenses=tuple(meta.get("defenses", [])), head=meta.get("head"), model_spec=spec)


def update_norm(update: dict[str, Tensor]) -> float:
    """Global L2 norm of an update."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))
