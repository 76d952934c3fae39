"""Flower integration: a curious server that captures every client's round as an Observation.

Needs ``pip install gradleak[flower]`` (``flwr[simulation]==1.41.0``); written for Flower's
message API (``flwr.serverapp.strategy.FedAvg``, ``ArrayRecord``, ``ServerApp``/``ClientApp``).

- :class:`CaptureStrategy` — a ``FedAvg`` that, unchanged in what it aggregates, records the global
  arrays it sends (``configure_train``) and each client's returned arrays (``aggregate_train``),
  turns them into Observations (FedSGD: the gradient ``(θ₀ − θ₁)/lr``; FedAvg: the delta
  ``θ_K − θ₀``) in a :class:`~gradleak.fl.capture.CaptureStore`, and runs an audit hook on them within a
  budget: every ``audit_every``-th round, at most ``audits_per_round`` clients a round (the attack's own
  budget is the hook's, e.g. its iterations). With ``server`` (a :class:`~gradleak.servers.ServerStrategy`) it
  is a malicious server: it modifies the global model before every round's send.
- :func:`make_client_app` / :func:`make_server_app` — the apps of ``gradleak fl-demo``: clients train
  on their shard of a bundled dataset with gradleak's own defenses and label augmentations
  (:mod:`gradleak.fl.task`), optionally behind the client mods of :mod:`gradleak.fl.mods` (the task's
  ``model_check`` and ``guard_db``). Built without a task they read it from Flower's ``run_config``, which
  is how the module-level :data:`server_app` / :data:`client_app` run in deployment mode
  (``docs/flower.md``).
- :func:`run_simulation` — the demo's Ray simulation, returning the store.

Example::

    store = run_simulation(FlowerTask(batch_size=2), num_clients=2, num_rounds=1, capture_dir="out/cap")
    obs = store.load(1, store.captured()[0]["client"])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ..data import Dataset, Normalization
from ..errors import InputError
from ..models import ModelSpec
from ..observation import Observation
from ..protocols import FedSGD, Protocol
from ..servers import ServerStrategy
from ..victim import evaluate as evaluate_model
from .capture import AuditHook, CaptureStore, LabelAttackAudit
from .mods import RoundBatch, leakage_guard_mod, model_check_mod, round_protocol
from .task import FlowerTask, client_batch, client_train, shard, update_between

__all__ = ["CaptureStrategy", "client_app", "make_client_app", "make_server_app", "run_simulation", "server_app"]

log = logging.getLogger(__name__)
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


#: the default audit hook: label recovery only
LABELS_ONLY = LabelAttackAudit()


class CaptureStrategy(FedAvg):
    """``FedAvg`` that captures what each client returns (see the module docstring).

    Args:
        store: where the Observations go (resumable and bounded, see :class:`CaptureStore`).
        model_spec: the architecture the arrays belong to (the server's own model).
        normalization: the input preprocessing the clients use, if the server knows it.
        protocol: the protocol sent to clients in every round's config (the server decides it).
        lr: the FedSGD step the clients take, sent in the config (the server divides by it).
        bn_mode: the clients' BatchNorm mode (``eval``: running statistics, as every gradleak scenario).
        audit: run on each capture as the rounds go (default: label recovery only); ``None`` to skip.
        audit_every: audit rounds 1, 1 + k, 1 + 2k, ... only (every round is still captured).
        audits_per_round: audit at most this many clients of a round (``None``: all), the first by node id, so
            the same clients are followed from round to round.
        round_offset: added to Flower's round numbers (resuming a run that already did rounds).
        server: a malicious server's strategy: every round it modifies the global model
            (:meth:`~gradleak.servers.ServerStrategy.prepare`, seeded by the round) and sends that instead; the
            captures hold the modified model and the strategy's record. It does not aggregate what comes back:
            the global model stays as it was, and the next round is modified afresh. ``None``: honest.
        **fedavg: ``FedAvg``'s own arguments (``fraction_train``, ``min_train_nodes``, ...).
    """

    def __init__(
        self,
        store: CaptureStore,
        *,
        model_spec: ModelSpec,
        normalization: Normalization | None = None,
        protocol: Protocol | None = None,
        lr: float = 0.1,
        bn_mode: str = "eval",
        audit: AuditHook | None = LABELS_ONLY,
        audit_every: int = 1,
        audits_per_round: int | None = None,
        round_offset: int = 0,
        server: ServerStrategy | None = None,
        **fedavg: Any,
    ):
        super().__init__(**fedavg)
        if not lr > 0:
            raise InputError(f"the FedSGD step lr must be > 0, got {lr}")
        if audit_every < 1 or (audits_per_round is not None and audits_per_round < 0):
            raise InputError(
                f"audit_every must be >= 1 and audits_per_round >= 0, got {audit_every}, {audits_per_round}"
            )
        self.audit_every, self.audits_per_round = audit_every, audits_per_round
        self.store, self.model_spec, self.normalization = store, model_spec, normalization
        self.protocol: Protocol = protocol if protocol is not None else FedSGD()
        if bn_mode not in ("train", "eval"):
            raise InputError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
        self.lr, self.bn_mode, self.audit, self.round_offset = lr, bn_mode, audit, round_offset
        self.server = server
        self._sent: dict[int, dict[str, torch.Tensor]] = {}
        self._modified: dict[int, tuple[torch.nn.Module, dict[str, Any]]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round + self.round_offset
        config["protocol"] = json.dumps(self.protocol.to_json())
        config["lr"] = self.lr
        if self.server is not None:
            self._modified[r] = self._modify(self.server, r, arrays.to_torch_state_dict())
            arrays = ArrayRecord({k: v.detach().contiguous() for k, v in self._modified[r][0].state_dict().items()})
        self._sent[r] = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        return super().configure_train(r, arrays, config, grid)

    def _modify(
        self, server: ServerStrategy, server_round: int, state: dict[str, torch.Tensor]
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The malicious server's model for this round (from the global ``state``) and its record."""
        model = self.model_spec.build()
        model.load_state_dict(state)
        shape, n = self.model_spec.input_shape, self.model_spec.num_classes
        server.check(model, input_shape=shape, num_classes=n)
        modified, record = server.prepare(
            model,
            input_shape=shape,
            num_classes=n,
            normalization=self.normalization,
            generator=torch.Generator().manual_seed(server_round),
        )
        return modified.train(self.bn_mode == "train"), record

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self.round_offset
        replies = list(replies)
        sent = self._sent.pop(r, None)
        modified = self._modified.pop(r, None)
        if sent is not None:
            audits = 0
            for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
                if msg.has_error():
                    self.store.add_error(r, str(msg.metadata.src_node_id), str(msg.error.reason))
                else:
                    hook = self.audit if self.audit_due(r, audits) else None
                    entry = self._capture(r, sent, msg, modified, hook)
                    audits += hook is not None and entry is not None and entry.get("audit") is not None
        arrays, metrics = super().aggregate_train(r, replies)
        if modified is not None:
            arrays = None  # a malicious round's replies train the modified model: the global model stays
        self.store.finish_round(r, None if arrays is None else arrays.to_torch_state_dict())
        return arrays, metrics

    def audit_due(self, server_round: int, audited: int) -> bool:
        """Whether a capture of ``server_round`` is audited when ``audited`` of its clients already were."""
        return (
            self.audit is not None
            and (server_round - 1) % self.audit_every == 0
            and (self.audits_per_round is None or audited < self.audits_per_round)
        )

    def observation(
        self,
        sent: dict[str, torch.Tensor],
        returned: dict[str, torch.Tensor],
        batch_size: int | None,
        modified: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    ) -> Observation:
        """The Observation of one reply: the model as sent and the update the client's arrays imply (``modified``:
        a malicious round's model and record)."""
        if modified is None:
            model = self.model_spec.build()
            model.load_state_dict(sent)
            model.train(self.bn_mode == "train")
        else:
            model = modified[0]
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        update = update_between(sent, returned, names, self.protocol, self.lr)
        return Observation(
            model=model,
            update=update,
            protocol=self.protocol,
            num_classes=self.model_spec.num_classes,
            input_shape=self.model_spec.input_shape,
            batch_size=batch_size,
            normalization=self.normalization,
            model_spec=self.model_spec if self.server is None or self.server.keeps_architecture else None,
            server=None if modified is None else modified[1],
        )

    def _capture(
        self,
        server_round: int,
        sent: dict[str, torch.Tensor],
        msg: Message,
        modified: tuple[torch.nn.Module, dict[str, Any]] | None,
        audit: AuditHook | None,
    ) -> dict[str, Any] | None:
        client = str(msg.metadata.src_node_id)
        content = msg.content
        metrics: dict[str, Any] = {}
        for rec in content.metric_records.values():
            metrics.update({k: v for k, v in rec.items()})
        batch = metrics.get(self.weighted_by_key)
        try:
            returned = next(iter(content.array_records.values())).to_torch_state_dict()
            obs = self.observation(sent, returned, None if batch is None else int(batch), modified)
        except (InputError, StopIteration, RuntimeError) as e:
            log.warning("round %d: cannot capture client %s: %s", server_round, client, e)
            return None
        return self.store.add(server_round, client, obs, metrics, audit)


# -- the demo's apps ------------------------------------------------------------------------------

_DATA: dict[tuple[str, int | None], Dataset] = {}


def _data(task: FlowerTask) -> Dataset:
    key = (task.scenario.dataset, task.scenario.image_size)
    if key not in _DATA:
        _DATA[key] = task.load_data()
    return _DATA[key]


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError:
        raise InputError(
            "this SuperNode has no partition: start it with --node-config 'partition-id=0 num-partitions=2'"
        ) from None


def _server_round(msg: Message) -> int:
    cfg = next(iter(msg.content.config_records.values()), ConfigRecord())
    return int(cast(int, cfg["server-round"]))


def _model_of(t: FlowerTask) -> Callable[[Context], torch.nn.Module]:
    """The agreed architecture, fresh, in the clients' BatchNorm mode (for the mods)."""
    return lambda _context: t.model_spec(_data(t)).build().train(t.scenario.bn_mode == "train")


def _batch_of(t: FlowerTask) -> Callable[[Message, Context], RoundBatch]:
    """The batch this client trains on in the message's round (for the mods)."""

    def batch(msg: Message, context: Context) -> RoundBatch:
        data = _data(t)
        pid, n = _partition(context)
        b = client_batch(t, data, pid, n, _server_round(msg))
        return RoundBatch(b.images, b.targets, data.normalization)

    return batch


def make_client_app(task: FlowerTask | None = None) -> ClientApp:
    """The demo's ClientApp: trains on its shard with the task's defenses and augmentations, behind the task's
    model check and guard (:mod:`gradleak.fl.mods`) when it asks for them.

    Without ``task`` it reads the task from ``context.run_config`` (deployment mode).
    """
    app = ClientApp()

    def task_of(context: Context) -> FlowerTask:
        return task if task is not None else FlowerTask.from_config(context.run_config)

    def global_model(t: FlowerTask, data: Dataset, msg: Message) -> torch.nn.Module:
        model = t.model_spec(data).build()
        model.load_state_dict(next(iter(msg.content.array_records.values())).to_torch_state_dict())
        return model.train(t.scenario.bn_mode == "train")

    def check_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        t = task_of(context)
        if not t.model_check:
            return call_next(msg, context)
        return model_check_mod(_model_of(t), _batch_of(t))(msg, context, call_next)

    def guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        t = task_of(context)
        guard = t.leakage_guard()
        if guard is None:
            return call_next(msg, context)
        return leakage_guard_mod(guard, _model_of(t), _batch_of(t), lr=t.lr)(msg, context, call_next)

    @app.train(mods=[check_mod, guard_mod])
    def train(msg: Message, context: Context) -> Message:
        t = task_of(context)
        data = _data(t)
        pid, n = _partition(context)
        protocol, lr = round_protocol(msg, t.lr)
        state, metrics, _ = client_train(t, data, global_model(t, data, msg), protocol, lr, pid, n, _server_round(msg))
        metrics["num-examples"] = int(metrics["num-examples"])
        metrics["partition-id"] = pid  # lets the demo score against this client's data; no attack reads it
        reply = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(dict(metrics))})
        return Message(content=reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        t = task_of(context)
        data = _data(t)
        pid, n = _partition(context)
        own = data.subset(shard(len(data), pid, n, t.scenario.seed))
        metrics = MetricRecord({"num-examples": len(own), **evaluate_model(global_model(t, data, msg), own)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def audit_from_config(cfg: Any) -> LabelAttackAudit:
    """The audit hook named by run_config keys ``audit-labels`` / ``audit-attacks`` / ``audit-iterations`` (its
    budget per round: ``audit-every`` and ``audits-per-round``, read by :func:`make_server_app`)."""
    attacks = tuple(a.strip() for a in str(cfg.get("audit-attacks", "")).split(",") if a.strip())
    labels = tuple(a.strip() for a in str(cfg.get("audit-labels", "auto")).split(",") if a.strip())
    iters = int(cfg.get("audit-iterations", 0))
    return LabelAttackAudit(label_methods=labels, attacks=attacks, settings={"iterations": iters or None})


def make_server_app(
    task: FlowerTask | None = None,
    *,
    capture_dir: str | Path | None = None,
    num_rounds: int | None = None,
    min_clients: int | None = None,
    audit: AuditHook | None = None,
    audit_every: int | None = None,
    audits_per_round: int | None = None,
    max_bytes: int | None = 1 << 30,
    keep_rounds: int | None = None,
    server: ServerStrategy | None = None,
) -> ServerApp:
    """The curious server: FedAvg rounds with :class:`CaptureStrategy`, resuming from ``capture_dir``; a malicious
    one with ``server`` (default: the task's ``scenario.server``, run_config key ``server``). After every round
    (and before the first) it evaluates the global model on the task's whole dataset (Flower's server-side
    ``evaluate_fn``) and records it in the store (:meth:`CaptureStore.add_evaluation`).

    Arguments left ``None`` come from ``context.run_config`` (``num-server-rounds``, ``capture-dir``,
    ``min-clients``, ``audit-*``, ``audits-per-round`` (absent: every client), and the task's own keys).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        t = task if task is not None else FlowerTask.from_config(rc)
        rounds = num_rounds if num_rounds is not None else int(rc.get("num-server-rounds", 2))
        folder = capture_dir if capture_dir is not None else str(rc.get("capture-dir", "out/flower-capture"))
        clients = min_clients if min_clients is not None else int(rc.get("min-clients", 2))
        every = audit_every if audit_every is not None else int(rc.get("audit-every", 1))
        per_round = audits_per_round
        if per_round is None and "audits-per-round" in rc:
            per_round = int(rc["audits-per-round"])
        store = CaptureStore(folder, max_bytes=max_bytes, keep_rounds=keep_rounds)
        data = _data(t)
        state = t.initial_model(data).state_dict()
        offset = 0
        resumed = store.resume()
        if resumed is not None:
            offset, state = resumed
            log.info("resuming the capture in %s after round %d", folder, offset)
        if rounds - offset <= 0:
            log.info("all %d rounds are already captured in %s", rounds, folder)
            return
        strategy = CaptureStrategy(
            store,
            model_spec=t.model_spec(data),
            normalization=data.normalization,
            protocol=t.scenario.protocol,
            lr=t.lr,
            bn_mode=t.scenario.bn_mode,
            audit=audit if audit is not None else audit_from_config(rc),
            audit_every=every,
            audits_per_round=per_round,
            round_offset=offset,
            server=server if server is not None else t.scenario.server,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        model = t.initial_model(data)

        def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            metrics: dict[str, int | float] = {"num-examples": len(data), **evaluate_model(model, data)}
            store.add_evaluation(server_round + offset, metrics)
            return MetricRecord(dict(metrics))

        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(dict(state)), num_rounds=rounds - offset, evaluate_fn=evaluate_global
        )

    return app


def run_simulation(
    task: FlowerTask,
    *,
    num_clients: int = 2,
    num_rounds: int = 1,
    capture_dir: str | Path,
    audit: AuditHook | None = None,
    audit_every: int = 1,
    audits_per_round: int | None = None,
    max_bytes: int | None = 1 << 30,
    keep_rounds: int | None = None,
    num_cpus: int | None = None,
    server: ServerStrategy | None = None,
) -> CaptureStore:
    """Run the demo federation in Flower's Ray simulation and return the capture store; ``server``: a malicious
    server's strategy (only the server app holds it; default: the task's ``scenario.server``)."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    cpus = num_cpus or min(num_clients, os.cpu_count() or 1)
    flwr_run_simulation(
        server_app=make_server_app(
            task,
            capture_dir=capture_dir,
            num_rounds=num_rounds,
            min_clients=num_clients,
            audit=audit if audit is not None else LabelAttackAudit(),
            audit_every=audit_every,
            audits_per_round=audits_per_round,
            max_bytes=max_bytes,
            keep_rounds=keep_rounds,
            server=server,
        ),
        client_app=make_client_app(task),
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "object_store_memory": 100 * 1024**2, "include_dashboard": False},
        },
    )
    return CaptureStore(capture_dir, max_bytes=max_bytes, keep_rounds=keep_rounds)


def true_update(
    task: FlowerTask, store: CaptureStore, server_round: int, client: str, partition_id: int, num_partitions: int
) -> tuple[dict[str, torch.Tensor], Any]:
    """For tests and the demo's scoring: what client ``partition_id`` honestly computed in that round
    (no defenses), from the captured model, and its batch."""
    from ..protocols import client_update

    obs = store.load(server_round, client)
    data = _data(task)
    batch = client_batch(task, data, partition_id, num_partitions, server_round)
    x = data.normalization.normalize(batch.images)
    return client_update(obs.model, obs.protocol, x, batch.targets), batch


#: deployment-mode apps (``serverapp = "gradleak.fl.flower:server_app"``), configured by run_config
server_app = make_server_app()
client_app = make_client_app()
