"""Atomic file writing: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["to_jsonable", "write_bytes_atomic", "write_json_atomic"]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Creates missing parent folders. On any failure the temp file is removed and an earlier file at
    ``path`` is left intact. Returns ``path`` as a string.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return str(target)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> str:
    """Write ``obj`` as strict JSON to ``path`` atomically; returns ``path`` as a string.

    Tensors, numpy arrays and scalars become lists/numbers, NaN and ±inf become ``null``, paths
    become strings and objects with ``to_json()`` are asked for their dict. Anything else raises
    :class:`InputError` before ``path`` is touched.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def to_jsonable(obj: Any, _where: str = "$") -> Any:
    """Return a copy of ``obj`` made only of JSON types, with non-finite floats as ``None``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {_key(k, _where): to_jsonable(v, f"{_where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return to_jsonable(to_json(), _where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if hasattr(obj, "detach"):  # torch.Tensor, without importing torch here
        obj = obj.detach().cpu()
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # tensors, numpy arrays and scalars
        value = obj.tolist()
        if isinstance(value, (bool, int, float, str, list)) or value is None:
            return to_jsonable(value, _where)
    raise InputError(
        f"cannot write {type(obj).__name__} at {_where} as JSON; "
        "convert it to numbers, strings, lists or dicts (or give it a to_json() method)"
    )


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    if isinstance(key, (int, float)):
        return str(key)
    raise InputError(f"cannot write a {type(key).__name__} key at {where} as JSON; use strings")


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
