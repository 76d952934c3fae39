"""The schema of an observation file's JSON header, checked before anything is built or allocated.

A header names its architecture in one of two ways, and never names code:

- ``{"kind": "zoo", "name": <a registered zoo model>, "num_classes", "input_shape", "kwargs"}`` with
  kwargs of JSON scalars (or short lists of them) within bounds;
- ``{"kind": "user", "sha256": <architecture_hash of the model and head>}``: the caller supplies the
  model and loading checks that it has this layout.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .models import MODELS, ModelSpec
from .normalization import Normalization
from .protocols import FedAvg, FedSGD, Protocol
from .schema import Problems, brief, is_int, is_number

FORMAT = "gradleak-observation-2"
FORMAT_V1 = "gradleak-observation-1"  # zoo models only: its model_spec has no "kind"
MAX_CLASSES = 100_000
MAX_INPUT_ELEMENTS = 1 << 24
MAX_BATCH = 100_000
MAX_LOCAL_STEPS = 100_000
MAX_DEFENSES = 64
MAX_KWARGS = 16
MAX_KWARG_INT = 4096
FIELDS = {
    "format",
    "protocol",
    "num_classes",
    "input_shape",
    "batch_size",
    "normalization",
    "defenses",
    "head",
    "model_spec",
    "model_training",
    "bn_train",
    "clients",
    "client_batch_sizes",
    "server",
}
MAX_CLIENTS = 100_000
MAX_SERVER_CHARS = 1 << 16


@dataclass(frozen=True)
class ObservationHeader:
    """A header that passed the schema: what loading builds the Observation from."""

    protocol: Protocol
    num_classes: int
    input_shape: tuple[int, ...]
    batch_size: int | None
    normalization: Normalization | None
    defenses: tuple[dict[str, Any], ...]
    head: str
    spec: ModelSpec | None  # a zoo model, or None for a user model
    user_sha256: str | None  # the user model's architecture hash, or None for a zoo model
    model_training: bool
    bn_train: bool
    clients: int = 1
    client_batch_sizes: tuple[int, ...] | None = None
    server: dict[str, Any] | None = None


def parse_header(meta: dict[str, Any], what: str) -> ObservationHeader:
    """Check every field of ``meta``; raise one InputError listing all problems, or return the header."""
    p = Problems()
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        p.append(f"format: expected {FORMAT!r}, got {brief(fmt)}")
    p.only(meta, FIELDS)
    num_classes = p.integer(meta, "num_classes", 1, MAX_CLASSES)
    shape = p.int_list(meta, "input_shape", 1, MAX_INPUT_ELEMENTS, (1, 4))
    if shape is not None and math.prod(shape) > MAX_INPUT_ELEMENTS:
        p.append(f"input_shape: {shape} holds more than {MAX_INPUT_ELEMENTS} values")
        shape = None
    batch_size = p.integer(meta, "batch_size", 1, MAX_BATCH, nullable=True)
    protocol = _protocol(p, meta)
    norm = _normalization(p, meta, None if shape is None else shape[0])
    defenses = p.get(meta, "defenses", "")
    if not (
        isinstance(defenses, list) and len(defenses) <= MAX_DEFENSES and all(isinstance(d, dict) for d in defenses)
    ):
        if "defenses" in meta:
            p.append(f"defenses: expected a list of at most {MAX_DEFENSES} JSON objects, got {brief(defenses)}")
        defenses = []
    head = p.string(meta, "head")
    training, bn_train = p.boolean(meta, "model_training"), p.boolean(meta, "bn_train")
    spec, sha = _model_spec(p, meta, fmt == FORMAT_V1, num_classes, shape)
    clients = p.integer(meta, "clients", 1, MAX_CLIENTS, optional=True) or 1
    sizes = None
    if meta.get("client_batch_sizes") is not None:
        sizes = p.int_list(meta, "client_batch_sizes", 1, MAX_BATCH, (1, MAX_CLIENTS))
    server = meta.get("server")
    if server is not None and not (isinstance(server, dict) and len(json.dumps(server)) <= MAX_SERVER_CHARS):
        p.append(f"server: expected a JSON object of at most {MAX_SERVER_CHARS} characters, got {brief(server)}")
        server = None
    p.raise_if_any(f"{what} has a bad header")
    # no problems: every required field was read
    assert protocol is not None and num_classes is not None and shape is not None and head is not None
    assert training is not None and bn_train is not None
    return ObservationHeader(
        protocol,
        num_classes,
        tuple(shape),
        batch_size,
        norm,
        tuple(defenses),
        head,
        spec,
        sha,
        training,
        bn_train,
        clients,
        None if sizes is None else tuple(sizes),
        server,
    )


def protocol_from_json(d: Any) -> Protocol:
    """The protocol a ``Protocol.to_json()`` record describes, checked (one InputError lists every problem)."""
    p = Problems()
    protocol = _protocol(p, {"protocol": d})
    p.raise_if_any("bad protocol record")
    assert protocol is not None  # no problems: the record was read
    return protocol


def _protocol(p: Problems, meta: dict[str, Any]) -> Protocol | None:
    d = p.obj(meta, "protocol")
    if d is None:
        return None
    name = p.string(d, "name", "protocol.", choices=("fedsgd", "fedavg"))
    if name == "fedsgd":
        p.only(d, {"name"}, "protocol.")
        return FedSGD()
    if name != "fedavg":
        return None
    p.only(d, {"name", "local_steps", "local_lr", "local_batch"}, "protocol.")
    steps = p.integer(d, "local_steps", 1, MAX_LOCAL_STEPS, "protocol.")
    lr = p.number(d, "local_lr", 0.0, 1e6, "protocol.")
    if lr == 0.0:
        p.append("protocol.local_lr: must be > 0")
    batch = p.integer(d, "local_batch", 1, MAX_BATCH, "protocol.", nullable=True)
    return None if steps is None or not lr else FedAvg(steps, lr, batch)


def _normalization(p: Problems, meta: dict[str, Any], channels: int | None) -> Normalization | None:
    d = p.obj(meta, "normalization", nullable=True)
    if d is None:
        return None
    p.only(d, {"mean", "std"}, "normalization.")
    lists = {}
    for key in ("mean", "std"):
        v = p.get(d, key, "normalization.")
        ok = (
            isinstance(v, list)
            and (channels is None or len(v) == channels)
            and len(v) > 0
            and all(is_number(x) and (key == "mean" or x > 0) for x in v)
        )
        if not ok and key in d:
            p.append(
                f"normalization.{key}: expected {channels or 'one per channel'} finite numbers"
                f"{' > 0' if key == 'std' else ''}, got {brief(v)}"
            )
        lists[key] = v if ok else None
    if lists["mean"] is None or lists["std"] is None or len(lists["mean"]) != len(lists["std"]):
        return None
    return Normalization(tuple(lists["mean"]), tuple(lists["std"]))


def _kwarg_ok(v: Any) -> bool:
    scalar = lambda x: (
        x is None
        or isinstance(x, bool)
        or (is_int(x) and abs(x) <= MAX_KWARG_INT)
        or (isinstance(x, float) and math.isfinite(x))
        or (isinstance(x, str) and len(x) <= 64)
    )
    return scalar(v) or (isinstance(v, list) and len(v) <= MAX_KWARGS and all(scalar(x) for x in v))


def _model_spec(
    p: Problems, meta: dict[str, Any], v1: bool, num_classes: int | None, shape: list[int] | None
) -> tuple[ModelSpec | None, str | None]:
    d = p.obj(meta, "model_spec")
    if d is None:
        return None, None
    kind = d.get("kind", "zoo" if v1 else None)
    if kind == "user":
        p.only(d, {"kind", "sha256"}, "model_spec.")
        sha = d.get("sha256")
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            p.append(f"model_spec.sha256: expected 64 lowercase hex digits, got {brief(sha)}")
            return None, None
        return None, sha
    if kind != "zoo":
        p.append(f"model_spec.kind: expected 'zoo' or 'user', got {brief(kind)}")
        return None, None
    p.only(d, {"kind", "name", "num_classes", "input_shape", "kwargs"}, "model_spec.")
    name = d.get("name")
    if not (isinstance(name, str) and name in MODELS):
        p.append(
            f"model_spec.name: {brief(name)} is not a zoo model ({', '.join(MODELS.names())}); a file "
            "never names code: load it with the model passed in (model= or model_factory=)"
        )
        name = None
    if d.get("num_classes") != num_classes or d.get("input_shape") != shape:
        p.append(
            f"model_spec: num_classes {brief(d.get('num_classes'))} and input_shape {brief(d.get('input_shape'))} "
            "differ from the observation's"
        )
    kwargs = p.obj(d, "kwargs", "model_spec.") if "kwargs" in d else {}
    if kwargs is not None:
        bad = [k for k, v in kwargs.items() if len(k) > 64 or not _kwarg_ok(v)]
        if len(kwargs) > MAX_KWARGS or bad:
            p.append(
                f"model_spec.kwargs: at most {MAX_KWARGS} entries of JSON scalars (integers within "
                f"±{MAX_KWARG_INT}) or short lists of them; bad: {brief(bad or list(kwargs))}"
            )
            kwargs = None
    if name is None or kwargs is None or num_classes is None or shape is None:
        return None, None
    return ModelSpec(name, num_classes, tuple(shape), dict(kwargs)), None
