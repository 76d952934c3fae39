"""Flower client mods that protect a client from its server (:mod:`gradleak.guard`), for Flower 1.41's message API.

A mod has Flower's ``Mod`` signature ``(msg, context, call_next) -> Message`` and acts on train messages only:

- :func:`model_check_mod` — before training: compares the received arrays with the agreed architecture, loads them
  and runs :func:`~gradleak.guard.model_check` with the round's batch; when a check fires it logs which and, by
  default, refuses to train (an error reply naming the checks, which the server sees as a failed client).
- :func:`leakage_guard_mod` — after training: runs a :class:`~gradleak.guard.LeakageGuard` on the update the
  reply's arrays imply and sends them, replaces them with a remedy's, or answers with an error instead (blocked).

Both need the client's view of the round: ``model_of(context)`` builds a fresh model of the agreed architecture in
the mode the client trains in, ``batch_of(msg, context)`` gives the round's :class:`RoundBatch`. The protocol and
step come from the train message's config (``protocol``: ``Protocol.to_json()`` as JSON, ``lr``), as gradleak's
:class:`~gradleak.fl.flower.CaptureStrategy` sends them. Example::

    app = ClientApp()

    @app.train(mods=[model_check_mod(model_of, batch_of), leakage_guard_mod(LeakageGuard(), model_of, batch_of)])
    def train(msg, context): ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from torch import Tensor, nn

from ..errors import InputError
from ..guard import LeakageGuard, ModelCheck, ModelCheckThresholds, architecture_check, model_check
from ..normalization import Normalization
from ..observation_schema import protocol_from_json
from ..protocols import FedSGD, Protocol
from .task import state_after, update_between

__all__ = ["RoundBatch", "leakage_guard_mod", "model_check_mod", "round_protocol"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundBatch:
    """The batch a client trains on in one round: images in [0, 1], training targets (int64 labels or soft
    targets) and the normalisation the model expects."""

    images: Tensor
    targets: Tensor
    normalization: Normalization | None = None

    def inputs(self) -> Tensor:
        return self.images if self.normalization is None else self.normalization.normalize(self.images)


ModelOf = Callable[[Context], nn.Module]
BatchOf = Callable[[Message, Context], RoundBatch]


def round_protocol(msg: Message, default_lr: float) -> tuple[Protocol, float]:
    """The protocol and FedSGD step of a train message's config (FedSGD and ``default_lr`` where it names none)."""
    cfg = next(iter(msg.content.config_records.values()), ConfigRecord())
    protocol = protocol_from_json(json.loads(str(cfg["protocol"]))) if "protocol" in cfg else FedSGD()
    return protocol, float(cast(float, cfg.get("lr", default_lr)))


def _arrays(msg: Message) -> tuple[str, dict[str, Tensor]]:
    key, record = next(iter(msg.content.array_records.items()))
    return key, record.to_torch_state_dict()


def _refuse(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def model_check_mod(
    model_of: ModelOf, batch_of: BatchOf, *, thresholds: ModelCheckThresholds | None = None, on_fail: str = "refuse"
) -> Mod:
    """A mod that checks every received model before the client trains on it (see the module docstring).

    ``on_fail``: ``refuse`` (reply with an error naming the checks that fired, do not train) or ``warn`` (log them
    and train anyway)."""
    if on_fail not in ("refuse", "warn"):
        raise InputError(f"on_fail must be 'refuse' or 'warn', got {on_fail!r}")

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        _, state = _arrays(msg)
        model = model_of(context)
        arch = architecture_check(state, model)
        if arch.fired:
            result = ModelCheck(checks=(arch,))
        else:
            model.load_state_dict(state)
            batch = batch_of(msg, context)
            result = model_check(model, batch.inputs(), batch.targets, thresholds=thresholds)
        if result.passed:
            return call_next(msg, context)
        log.warning("model check: %s", result.summary())
        return _refuse(msg, result.summary()) if on_fail == "refuse" else call_next(msg, context)

    return mod


def leakage_guard_mod(guard: LeakageGuard, model_of: ModelOf, batch_of: BatchOf, *, lr: float = 0.1) -> Mod:
    """A mod that runs ``guard`` on every outgoing update (see the module docstring); the reply keeps its other
    records (metrics) when its arrays are sent or replaced. ``lr``: the FedSGD step where the config names none."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        _, sent = _arrays(msg)
        key, returned = _arrays(reply)
        protocol, step = round_protocol(msg, lr)
        model = model_of(context)
        model.load_state_dict(sent)
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        batch = batch_of(msg, context)
        decision = guard.inspect(
            model,
            update_between(sent, returned, names, protocol, step),
            protocol=protocol,
            images=batch.images,
            targets=batch.targets,
            normalization=batch.normalization,
        )
        log.info("%s", decision.summary())
        if decision.update is None:
            return _refuse(msg, decision.summary())
        if decision.action == "defend":
            state = state_after(sent, decision.update, protocol, step)
            state |= {k: v for k, v in returned.items() if k not in decision.update}  # buffers as trained
            reply.content.array_records[key] = ArrayRecord({k: v.contiguous() for k, v in state.items()})
        return reply

    return mod
