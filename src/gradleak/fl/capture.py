"""What a curious FL server keeps: each client's round as an Observation on disk, and audits of them.

A :class:`CaptureStore` is a folder::

    ROOT/index.json                           every capture: round, client, file, bytes, metrics, audit
    ROOT/round_0001/client_<node>.safetensors one Observation (model as sent + the client's update)
    ROOT/round_0001/client_<node>.recon.safetensors   reconstructions of the audit, if any
    ROOT/latest.safetensors                   the aggregated global arrays after the last round

The index also keeps the global model's evaluations by round (:meth:`CaptureStore.add_evaluation`; round 0 is the
initial model), which the per-round leakage curve of ``gradleak fl-demo`` sets beside the audits.

It is *resumable* — reopening the folder reads ``index.json``; a capture already on disk is not
written or audited again, and :meth:`CaptureStore.resume` gives the last round and global arrays to
restart a server from — and *bounded*: ``max_bytes`` stops new captures once the folder holds that
many bytes, ``keep_rounds`` deletes the files of older rounds (their index entries stay, marked),
``max_clients_per_round`` captures only that many replies per round. Pure torch; no Flower here.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..auditing import AuditPlan, audit, make_attacks
from ..errors import GradleakError, InputError
from ..observation import ModelFactory, Observation
from ..report import write_json_atomic
from ..schema import Problems, brief, parse_json, read_safetensors

log = logging.getLogger(__name__)

INDEX_FORMAT = "gradleak-capture-1"
MAX_INDEX_CHARS = 1 << 26
MAX_ROUND = 1 << 31
ENTRY_FIELDS = {"round", "client", "path", "bytes", "metrics", "batch_size", "protocol", "audit", "skipped", "deleted"}
AuditHook = Callable[[Observation, dict[str, Any], Path], dict[str, Any]]


def _key(server_round: int, client: str) -> str:
    return f"{server_round}/{client}"


def _safe_relative(path: str) -> bool:
    """True for a relative POSIX path inside the store: no absolute path, drive, backslash or ``..``."""
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and ":" not in path
        and all(part not in ("", ".", "..") for part in parts)
    )


def _check_entry(p: Problems, e: Any, where: str) -> None:
    if not isinstance(e, dict):
        p.append(f"{where}expected a JSON object, got {brief(e)}")
        return
    p.only(e, ENTRY_FIELDS, where)
    p.integer(e, "round", 0, MAX_ROUND, where)
    p.string(e, "client", where)
    if "path" in e and not (isinstance(e["path"], str) and _safe_relative(e["path"])):
        p.append(f"{where}path: expected a relative path inside the store, got {brief(e['path'])}")
    p.integer(e, "bytes", 0, 1 << 62, where, optional=True)
    p.integer(e, "batch_size", 1, 1 << 31, where, nullable=True)
    for key in ("metrics", "protocol", "audit"):
        if e.get(key) is not None:
            p.obj(e, key, where)
    if "skipped" in e:
        p.string(e, "skipped", where)
    if "deleted" in e:
        p.boolean(e, "deleted", where)


def read_index(index: Path) -> tuple[dict[str, dict[str, Any]], int, dict[int, dict[str, Any]]]:
    """``(entries by round/client, latest round, evaluations by round)`` of a capture index; one InputError lists
    every problem."""
    try:
        text = index.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read capture index {index}: {e}") from None
    meta = parse_json(text, f"capture index {index}", max_chars=MAX_INDEX_CHARS)
    if meta.get("format") != INDEX_FORMAT:
        raise InputError(f"{index} is not a gradleak capture index (format {brief(meta.get('format'))})")
    p = Problems()
    p.only(meta, {"format", "latest_round", "captures", "evaluations"})
    latest = p.integer(meta, "latest_round", 0, MAX_ROUND)
    captures = p.get(meta, "captures", "")
    if not isinstance(captures, list):
        p.append(f"captures: expected a list, got {brief(captures)}")
        captures = []
    for i, entry in enumerate(captures):
        _check_entry(p, entry, f"captures[{i}].")
    evaluations = p.get(meta, "evaluations", "", optional=True) or []
    if not isinstance(evaluations, list):
        p.append(f"evaluations: expected a list, got {brief(evaluations)}")
        evaluations = []
    for i, ev in enumerate(evaluations):
        where = f"evaluations[{i}]."
        if not isinstance(ev, dict):
            p.append(f"{where}expected a JSON object, got {brief(ev)}")
            continue
        p.only(ev, {"round", "metrics"}, where)
        p.integer(ev, "round", 0, MAX_ROUND, where)
        p.obj(ev, "metrics", where)
    p.raise_if_any(f"capture index {index} is invalid")
    entries = {_key(e["round"], e["client"]): e for e in captures}
    if len(entries) != len(captures):
        raise InputError(f"capture index {index} is invalid: it lists a round/client pair twice")
    assert latest is not None  # no problems: the index was read
    return entries, latest, {ev["round"]: ev["metrics"] for ev in evaluations}


class CaptureStore:
    """The folder of captured client rounds (see the module docstring). Thread-safe."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_bytes: int | None = 1 << 30,
        keep_rounds: int | None = None,
        max_clients_per_round: int | None = None,
    ):
        if max_bytes is not None and max_bytes < 1:
            raise InputError(f"max_bytes must be positive, got {max_bytes}")
        if keep_rounds is not None and keep_rounds < 1:
            raise InputError(f"keep_rounds must be >= 1, got {keep_rounds}")
        self.root = Path(root)
        self.max_bytes, self.keep_rounds, self.max_clients_per_round = max_bytes, keep_rounds, max_clients_per_round
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.latest_round = 0
        self.evaluations: dict[int, dict[str, Any]] = {}  # the global model after round r (0: initial) → metrics
        index = self.root / "index.json"
        if index.exists():
            self.entries, self.latest_round, self.evaluations = read_index(index)

    # -- sizes -----------------------------------------------------------------------------------
    def bytes_used(self) -> int:
        return sum(e.get("bytes", 0) for e in self.entries.values() if not e.get("deleted"))

    def captured(self, server_round: int | None = None) -> list[dict[str, Any]]:
        """Index entries with a file on disk, in (round, client) order."""
        es = [
            e
            for e in self.entries.values()
            if e.get("path") and not e.get("deleted") and (server_round is None or e["round"] == server_round)
        ]
        return sorted(es, key=lambda e: (e["round"], e["client"]))

    def has(self, server_round: int, client: str) -> bool:
        e = self.entries.get(_key(server_round, client))
        return bool(e and e.get("path") and not e.get("deleted"))

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self,
        server_round: int,
        client: str,
        obs: Observation,
        metrics: dict[str, Any] | None = None,
        audit: AuditHook | None = None,
    ) -> dict[str, Any] | None:
        """Save ``obs`` as round ``server_round``'s capture of ``client`` and run ``audit`` on it.

        Returns the index entry, or ``None`` when the store's bounds skip it. A capture already on disk
        is kept as it is (resume).
        """
        if not client or client.startswith(".") or any(c in client for c in "/\\:"):
            raise InputError(f"client name {client!r} cannot name a file in the store")
        key = _key(server_round, client)
        with self._lock:
            if self.has(server_round, client):
                return self.entries[key]
            if (
                self.max_clients_per_round is not None
                and len(self.captured(server_round)) >= self.max_clients_per_round
            ):
                self.entries[key] = {"round": server_round, "client": client, "skipped": "max_clients_per_round"}
                self._write_index()
                return None
            if self.max_bytes is not None and self.bytes_used() >= self.max_bytes:
                log.warning(
                    "capture budget of %d bytes reached: round %d client %s not captured",
                    self.max_bytes,
                    server_round,
                    client,
                )
                self.entries[key] = {"round": server_round, "client": client, "skipped": "max_bytes"}
                self._write_index()
                return None
            rel = Path(f"round_{server_round:04d}") / f"client_{client}.safetensors"
            (self.root / rel.parent).mkdir(parents=True, exist_ok=True)
            obs.save(self.root / rel)
            entry = {
                "round": server_round,
                "client": client,
                "path": rel.as_posix(),
                "bytes": (self.root / rel).stat().st_size,
                "metrics": dict(metrics or {}),
                "batch_size": obs.batch_size,
                "protocol": obs.protocol.to_json(),
                "audit": None,
            }
            self.entries[key] = entry
            self._write_index()
        if audit is not None:
            try:
                result = audit(obs, entry, self.root)
            except GradleakError as e:
                result = {"error": str(e)}
            with self._lock:
                entry["audit"] = result
                self._write_index()
        return entry

    def add_error(self, server_round: int, client: str, reason: str) -> None:
        """Record that ``client`` answered ``server_round`` with an error instead of an update (e.g. its model check
        refused the model it received): an index entry skipped with the reason (its first 500 characters)."""
        with self._lock:
            if not self.has(server_round, client):
                entry = {"round": server_round, "client": client, "skipped": f"client error: {reason[:500]}"}
                self.entries[_key(server_round, client)] = entry
                self._write_index()

    def finish_round(self, server_round: int, arrays: dict[str, Tensor] | None) -> None:
        """Record that ``server_round`` is aggregated (``arrays``: the new global state) and prune."""
        from safetensors.torch import save_file

        with self._lock:
            if arrays is not None:
                tmp = self.root / "latest.safetensors.tmp"
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in arrays.items()},
                    str(tmp),
                    metadata={"round": str(server_round)},
                )
                tmp.replace(self.root / "latest.safetensors")
            self.latest_round = max(self.latest_round, server_round)
            if self.keep_rounds is not None:
                for e in self.entries.values():
                    if e.get("path") and not e.get("deleted") and e["round"] <= self.latest_round - self.keep_rounds:
                        e["deleted"] = True
                for folder in self.root.glob("round_*"):
                    number = folder.name.removeprefix("round_")
                    if folder.is_dir() and number.isdigit() and int(number) <= self.latest_round - self.keep_rounds:
                        shutil.rmtree(folder, ignore_errors=True)
            self._write_index()

    def add_evaluation(self, server_round: int, metrics: dict[str, Any]) -> None:
        """Record the evaluation of the global model after ``server_round`` (0: the initial model), which is the
        model sent in round ``server_round + 1``; a later evaluation of the same round replaces it."""
        with self._lock:
            self.evaluations[server_round] = dict(metrics)
            self._write_index()

    def _write_index(self) -> None:
        entries = sorted(self.entries.values(), key=lambda e: (e["round"], e["client"]))
        evaluations = [{"round": r, "metrics": m} for r, m in sorted(self.evaluations.items())]
        write_json_atomic(
            self.root / "index.json",
            {
                "format": INDEX_FORMAT,
                "latest_round": self.latest_round,
                "captures": entries,
                "evaluations": evaluations,
            },
        )

    # -- reading ---------------------------------------------------------------------------------
    def load(
        self,
        server_round: int,
        client: str,
        model: torch.nn.Module | None = None,
        *,
        model_factory: str | ModelFactory | None = None,
    ) -> Observation:
        """The captured Observation; a user model's capture needs ``model`` or ``model_factory``
        (see :meth:`Observation.load`). A path that leaves the store (``..``, a symlink out) is refused."""
        e = self.entries.get(_key(server_round, client))
        if not e or not e.get("path") or e.get("deleted"):
            raise InputError(f"no capture of client {client} in round {server_round} under {self.root}")
        path = (self.root / e["path"]).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise InputError(
                f"capture {e['path']!r} of client {client} in round {server_round} leads outside "
                f"the store {self.root}; refusing to read it"
            )
        return Observation.load(path, model, model_factory=model_factory)

    def resume(self) -> tuple[int, dict[str, Tensor]] | None:
        """``(last aggregated round, global state after it)`` to restart a server from, or ``None``."""
        path = self.root / "latest.safetensors"
        if not path.exists():
            return None
        return self.latest_round, read_safetensors(path, None, "global state").tensors()


@dataclass
class LabelAttackAudit:
    """The audit-as-you-go hook: :func:`gradleak.audit` (label recovery, then optional attacks) on each
    captured round.

    Writes the reconstructions beside the capture (``client_<node>.recon.safetensors``) and returns the
    audit's JSON (``AuditResult.to_json()`` plus ``reconstructions``) for the index. It sees the Observation
    only — the server has no ground truth; the demo scores against the clients' data afterwards.
    ``settings`` apply to every attack (e.g. ``{"iterations": 200}``; ``None`` values keep the default).
    """

    label_methods: Sequence[str] = ("auto",)
    attacks: Sequence[str] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        self.plan = AuditPlan(
            label_methods=tuple(self.label_methods), seed=self.seed, attacks=make_attacks(self.attacks, **self.settings)
        )

    def __call__(self, obs: Observation, entry: dict[str, Any], root: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        result = audit(obs, self.plan)
        out = result.to_json()
        recon = {r.name: r.result.images.detach().contiguous() for r in result.attacks if r.result is not None}
        if recon:
            path = (root / entry["path"]).with_suffix(".recon.safetensors")
            save_file(recon, str(path))
            out["reconstructions"] = path.relative_to(root).as_posix()
        return out
