"""What a curious FL server keeps: each client's round as an Observation on disk, and audits of them.

A :class:`CaptureStore` is a folder::

    ROOT/index.json                           every capture: round, client, file, bytes, metrics, audit
    ROOT/round_0001/client_<node>.safetensors one Observation (model as sent + the client's update)
    ROOT/round_0001/client_<node>.recon.safetensors   reconstructions of the audit, if any
    ROOT/latest.safetensors                   the aggregated global arrays after the last round

It is *resumable* — reopening the folder reads ``index.json``; a capture already on disk is not
written or audited again, and :meth:`CaptureStore.resume` gives the last round and global arrays to
restart a server from — and *bounded*: ``max_bytes`` stops new captures once the folder holds that
many bytes, ``keep_rounds`` deletes the files of older rounds (their index entries stay, marked),
``max_clients_per_round`` captures only that many replies per round. Pure torch; no Flower here.
"""
from __future__ import annotations

import json
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
from ..observation import Observation
from ..report import write_json_atomic

log = logging.getLogger(__name__)

INDEX_FORMAT = "gradleak-capture-1"
AuditHook = Callable[[Observation, dict[str, Any], Path], dict[str, Any]]


def _key(server_round: int, client: str) -> str:
    return f"{server_round}/{client}"


class CaptureStore:
    """The folder of captured client rounds (see the module docstring). Thread-safe."""

    def __init__(self, root: str | Path, *, max_bytes: int | None = 1 << 30, keep_rounds: int | None = None,
                 max_clients_per_round: int | None = None):
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
        index = self.root / "index.json"
        if index.exists():
            meta = json.loads(index.read_text())
            if meta.get("format") != INDEX_FORMAT:
                raise InputError(f"{index} is not a gradleak capture index (format {meta.get('format')!r})")
            self.entries = {_key(e["round"], e["client"]): e for e in meta["captures"]}
            self.latest_round = int(meta.get("latest_round", 0))

    # -- sizes -----------------------------------------------------------------------------------
    def bytes_used(self) -> int:
        return sum(e.get("bytes", 0) for e in self.entries.values() if not e.get("deleted"))

    def captured(self, server_round: int | None = None) -> list[dict[str, Any]]:
        """Index entries with a file on disk, in (round, client) order."""
        es = [e for e in self.entries.values() if e.get("path") and not e.get("deleted")
              and (server_round is None or e["round"] == server_round)]
        return sorted(es, key=lambda e: (e["round"], e["client"]))

    def has(self, server_round: int, client: str) -> bool:
        e = self.entries.get(_key(server_round, client))
        return bool(e and e.get("path") and not e.get("deleted"))

    # -- writing ---------------------------------------------------------------------------------
    def add(self, server_round: int, client: str, obs: Observation, metrics: dict[str, Any] | None = None,
            audit: AuditHook | None = None) -> dict[str, Any] | None:
        """Save ``obs`` as round ``server_round``'s capture of ``client`` and run ``audit`` on it.

        Returns the index entry, or ``None`` when the store's bounds skip it. A capture already on disk
        is kept as it is (resume).
        """
        key = _key(server_round, client)
        with self._lock:
            if self.has(server_round, client):
                return self.entries[key]
            if self.max_clients_per_round is not None and \
                    len(self.captured(server_round)) >= self.max_clients_per_round:
                self.entries[key] = {"round": server_round, "client": client, "skipped": "max_clients_per_round"}
                self._write_index()
                return None
            if self.max_bytes is not None and self.bytes_used() >= self.max_bytes:
                log.warning("capture budget of %d bytes reached: round %d client %s not captured",
                            self.max_bytes, server_round, client)
                self.entries[key] = {"round": server_round, "client": client, "skipped": "max_bytes"}
                self._write_index()
                return None
            rel = Path(f"round_{server_round:04d}") / f"client_{client}.safetensors"
            (self.root / rel.parent).mkdir(parents=True, exist_ok=True)
            obs.save(self.root / rel)
            entry = {"round": server_round, "client": client, "path": rel.as_posix(),
                     "bytes": (self.root / rel).stat().st_size, "metrics": dict(metrics or {}),
                     "batch_size": obs.batch_size, "protocol": obs.protocol.to_json(), "audit": None}
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

    def finish_round(self, server_round: int, arrays: dict[str, Tensor] | None) -> None:
        """Record that ``server_round`` is aggregated (``arrays``: the new global state) and prune."""
        from safetensors.torch import save_file

        with self._lock:
            if arrays is not None:
                tmp = self.root / "latest.safetensors.tmp"
                save_file({k: v.detach().contiguous().cpu() for k, v in arrays.items()}, str(tmp),
                          metadata={"round": str(server_round)})
                tmp.replace(self.root / "latest.safetensors")
            self.latest_round = max(self.latest_round, server_round)
            if self.keep_rounds is not None:
                for e in self.entries.values():
                    if e.get("path") and not e.get("deleted") and e["round"] <= self.latest_round - self.keep_rounds:
                        e["deleted"] = True
                for folder in self.root.glob("round_*"):
                    if folder.is_dir() and int(folder.name.split("_")[1]) <= self.latest_round - self.keep_rounds:
                        shutil.rmtree(folder, ignore_errors=True)
            self._write_index()

    def _write_index(self) -> None:
        entries = sorted(self.entries.values(), key=lambda e: (e["round"], e["client"]))
        write_json_atomic(self.root / "index.json", {"format": INDEX_FORMAT, "latest_round": self.latest_round,
                                                     "captures": entries})

    # -- reading ---------------------------------------------------------------------------------
    def load(self, server_round: int, client: str) -> Observation:
        e = self.entries.get(_key(server_round, client))
        if not e or not e.get("path") or e.get("deleted"):
            raise InputError(f"no capture of client {client} in round {server_round} under {self.root}")
        return Observation.load(self.root / e["path"])

    def resume(self) -> tuple[int, dict[str, Tensor]] | None:
        """``(last aggregated round, global state after it)`` to restart a server from, or ``None``."""
        from safetensors.torch import load_file

        path = self.root / "latest.safetensors"
        if not path.exists():
            return None
        return self.latest_round, load_file(str(path))


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
        self.plan = AuditPlan(label_methods=tuple(self.label_methods), seed=self.seed,
                              attacks=make_attacks(self.attacks, **self.settings))

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
