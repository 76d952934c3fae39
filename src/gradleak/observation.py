"""The :class:`Observation`: exactly what an FL server sees from one client round, and nothing more.

The model (architecture + the parameters/buffers the server sent), the shared update (per-parameter
gradient for FedSGD, parameter delta for FedAvg), protocol metadata and the defenses that were
applied. The client's data and labels never live here. Saved as one safetensors file whose header
holds the JSON metadata — never pickle. The header names a zoo model or records the architecture
hash of the user's model, never code: loading a user model's file takes the model from the caller
(see :mod:`gradleak.observation_schema`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import GradleakError, InputError
from .models import ModelSpec, architecture_hash, build_model, find_head
from .normalization import Normalization
from .observation_schema import FORMAT, ObservationHeader, parse_header
from .protocols import FedAvg, FedSGD, Protocol, stateless
from .schema import Problems, SafetensorsFile, finite_problems, read_safetensors, shape_problems, state_shapes

ModelFactory = Callable[..., nn.Module]
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


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
        model_spec: how to rebuild a zoo architecture (files record it, so :meth:`load` needs no model);
            without one, or for a user's ``module:factory``, files record the architecture's hash. A malicious
            server that changes only weights (trap, fishing) keeps the zoo model's spec; one that adds layers
            (imprint) leaves none.
        clients: how many clients' updates the server sees aggregated (secure aggregation: the mean of their
            updates, each client with its own batch); ``batch_size`` is then the total over all clients.
        client_batch_sizes: the per-client batch sizes the server assumes (summing to ``batch_size``), if known.
        server: what the server did to the model it sent (``None``: honest) — the JSON record of a malicious
            :class:`~gradleak.servers.ServerStrategy`, which the matching recovery reads.
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
    clients: int = 1
    client_batch_sizes: tuple[int, ...] | None = None
    server: dict[str, Any] | None = None

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
            elif not u.sum().isfinite() and not torch.isfinite(u).all():  # a finite sum: all finite (fast path)
                problems.append(f"{k}: the update contains NaN or inf")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        problems += self._aggregate_problems()
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        head = dict(self.model.named_modules()).get(self.head)
        if not isinstance(head, nn.Linear):
            problems.append(f"head {self.head!r} is not an nn.Linear of the model")
        elif head.out_features != self.num_classes:
            problems.append(f"head {self.head!r} has {head.out_features} outputs but num_classes is {self.num_classes}")
        if problems:
            raise InputError("the observation is inconsistent", problems)

    def _aggregate_problems(self) -> list[str]:
        if self.clients < 1:
            return [f"clients must be >= 1, got {self.clients}"]
        sizes = self.client_batch_sizes
        if sizes is None:
            return []
        problems = []
        if len(sizes) != self.clients:
            problems.append(f"{len(sizes)} client batch sizes given for an aggregate of {self.clients} client(s)")
        if any(b < 1 for b in sizes):
            problems.append(f"client batch sizes must be >= 1, got {list(sizes)}")
        if self.batch_size is not None and sum(sizes) != self.batch_size:
            problems.append(
                f"the client batch sizes {list(sizes)} sum to {sum(sizes)}, not batch_size {self.batch_size}"
            )
        return problems

    @property
    def aggregated(self) -> bool:
        """True if the update is an aggregate of several clients' updates (secure aggregation)."""
        return self.clients > 1

    # -- views ------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Tensor]:
        """The trainable parameters the server sent (detached)."""
        return {k: v.detach() for k, v in self.model.named_parameters() if v.requires_grad}

    @property
    def kind(self) -> str:
        return self.protocol.kind

    def known_batch_size(self) -> int:
        """The batch size, for methods whose ``problems`` already required it to be known."""
        if self.batch_size is None:
            raise InputError("the batch size is unknown to the server (this method needs it)")
        return self.batch_size

    def fedavg(self) -> FedAvg:
        """The FedAvg protocol, for methods whose ``problems`` already required a FedAvg delta."""
        if not isinstance(self.protocol, FedAvg):
            raise InputError(f"this needs a FedAvg delta; the observation is a {self.protocol.name} update")
        return self.protocol

    @property
    def device(self) -> torch.device:
        """Where the model (and so every attack's candidates) lives: attacks take it from here, never assume one."""
        return next(iter(self.parameters().values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parameters().values())).dtype

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
        return dict(self.model.named_modules())[self.head]

    def functional(self) -> tuple[nn.Module, dict[str, Tensor]]:
        """A :func:`~gradleak.protocols.stateless` copy of the model and its parameters, for replay."""
        net = stateless(self.model)
        return net, {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}

    def with_update(self, update: dict[str, Tensor], defense: dict[str, Any] | None = None) -> Observation:
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
            "model_spec": (
                {"kind": "zoo", **self.model_spec.to_json()}
                if self.model_spec is not None and self.model_spec.is_zoo
                else {"kind": "user", "sha256": architecture_hash(self.model, self.head)}
            ),
            "model_training": self.model.training,
            "bn_train": self.bn_train,
            "clients": self.clients,
            "client_batch_sizes": None if self.client_batch_sizes is None else list(self.client_batch_sizes),
            "server": self.server,
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
    def load(
        cls, path: str | Path, model: nn.Module | None = None, *, model_factory: str | ModelFactory | None = None
    ) -> Observation:
        """Read a file written by :meth:`save`, checking all of it before building anything.

        A zoo model's file rebuilds its model. A user model's file needs the model from the caller:
        ``model`` (an ``nn.Module``), or ``model_factory`` (a ``"module:factory"`` string or a callable,
        called as ``factory(num_classes=..., input_shape=...)``); its architecture must have the hash the
        file records. Every problem (header, tensor names and shapes, NaN or inf) raises one InputError.
        """
        f = read_safetensors(path, "gradleak", "observation")
        h = parse_header(f.header, f"observation {f.path}")
        on_meta = model is None and model_factory is None
        model = _resolve_model(h, model, model_factory, f.path)
        problems = Problems(_layout_problems(f, model))
        problems.raise_if_any(f"observation {f.path} does not fit its model")
        tensors = f.tensors()
        problems += finite_problems(tensors)
        problems.raise_if_any(f"observation {f.path} holds unusable values")
        if on_meta:
            assert h.spec is not None  # _resolve_model built the zoo model on the meta device
            model = h.spec.build()
        model.load_state_dict({k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")})
        model.train(h.model_training)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(h.bn_train)
        update = {k[len("update.") :]: v for k, v in tensors.items() if k.startswith("update.")}
        return cls(
            model=model,
            update=update,
            protocol=h.protocol,
            num_classes=h.num_classes,
            input_shape=h.input_shape,
            batch_size=h.batch_size,
            normalization=h.normalization,
            defenses=h.defenses,
            head=h.head,
            model_spec=h.spec,
            clients=h.clients,
            client_batch_sizes=h.client_batch_sizes,
            server=h.server,
        )


def _resolve_model(
    h: ObservationHeader, model: nn.Module | None, factory: str | ModelFactory | None, path: Path
) -> nn.Module:
    """The caller's model (checked against a user model's hash), or the zoo model on the meta device
    (no memory until its layout is known to fit the file)."""
    if model is not None and factory is not None:
        raise InputError("pass the model or a model_factory, not both")
    if factory is not None:
        model = (
            build_model(factory, h.num_classes, h.input_shape)
            if isinstance(factory, str)
            else factory(num_classes=h.num_classes, input_shape=h.input_shape)
        )
        if not isinstance(model, nn.Module):
            raise InputError(f"model factory {factory!r} returned {type(model).__name__}, not an nn.Module")
    if model is None:
        if h.spec is None:
            what = "a user model (not in the zoo)"
            if h.server is not None:
                what = f"a model the server changed ({str(h.server.get('name'))[:40]!r} adds layers to it)"
            raise InputError(
                f"observation {path} was saved from {what}, and a file never names "
                "code: pass the model, e.g. Observation.load(path, model_factory='module:factory') or "
                "model=<nn.Module> (CLI: --model module:factory)"
            )
        try:
            with torch.device("meta"):
                return h.spec.build()
        except GradleakError:
            raise
        except Exception as e:  # noqa: BLE001 (the zoo constructor met kwargs from the file it cannot take)
            raise InputError(
                f"observation {path}: zoo model {h.spec.name!r} cannot be built with "
                f"{h.spec.kwargs}: {type(e).__name__}: {e}"
            ) from None
    if h.user_sha256 is not None and architecture_hash(model, h.head) != h.user_sha256:
        raise InputError(
            f"observation {path} was saved from another architecture than the model given "
            "(parameter/buffer names, shapes, dtypes or head differ from the recorded sha256)"
        )
    return model


def _layout_problems(f: SafetensorsFile, model: nn.Module) -> list[str]:
    """Every tensor of the file that the model does not expect, misses or has in another shape."""
    problems = [
        f"unexpected tensor {k!r} (neither state.* nor update.*)"
        for k in sorted(f.shapes)
        if not k.startswith(("state.", "update."))
    ]
    params = {k: tuple(v.shape) for k, v in model.named_parameters() if v.requires_grad}
    for prefix, want in (("state.", state_shapes(model)), ("update.", params)):
        have = {k[len(prefix) :]: s for k, s in f.shapes.items() if k.startswith(prefix)}
        problems += shape_problems(have, want, prefix)
    floating = {f"state.{k}": v.is_floating_point() for k, v in model.state_dict().items()}
    floating |= {f"update.{k}": True for k in params}
    problems += [
        f"{k}: dtype {d} where the model has {'a floating' if floating[k] else 'an integer'} type"
        for k, d in sorted(f.dtypes.items())
        if k in floating and (d in FLOAT_DTYPES) != floating[k]
    ]
    return problems


def update_norm(update: dict[str, Tensor]) -> float:
    """Global L2 norm of an update."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))
