"""Reading untrusted gradleak files: a safetensors file whose JSON header is checked field by field.

Every file gradleak reads back (observations, checkpoints, priors, capture indexes) goes through here:
:func:`read_safetensors` turns any unreadable, truncated or foreign file into one :class:`InputError`
and reads the header and the tensor shapes without loading tensor data; :class:`Problems` collects
every way a header breaks its schema so that loading raises once, listing them all. JSON is parsed
strictly: no NaN or Infinity, a bounded size and nesting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import InputError, UnsafeFileError

MAX_HEADER_CHARS = 1 << 20
MISSING = object()
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str, what: str, *, max_chars: int = MAX_HEADER_CHARS) -> dict[str, Any]:
    """A JSON object from untrusted ``text`` (at most ``max_chars``); InputError otherwise."""
    if len(text) > max_chars:
        raise InputError(f"{what}: its JSON holds {len(text)} characters, more than {max_chars}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{what}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class SafetensorsFile:
    """A safetensors file's gradleak header and tensor shapes; :meth:`tensors` reads the data."""

    path: Path
    header: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]

    def tensors(self) -> dict[str, Tensor]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        except (OSError, SafetensorError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot read the tensors of {self.path}: {e}") from None


def read_safetensors(path: str | Path, key: str | None, what: str) -> SafetensorsFile:
    """Open ``path`` as a safetensors file whose metadata entry ``key`` holds a JSON object (``None``:
    no header needed, ``header`` is empty).

    Only safetensors is parsed (it runs no code); a non-safetensors file named like a pickle raises
    :class:`UnsafeFileError`; a missing, unreadable, truncated or foreign file, or a header that is not a
    JSON object, raises :class:`InputError` naming ``what`` it should be.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
            dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (OSError, SafetensorError, RuntimeError, ValueError) as e:
        if path.suffix in PICKLE_SUFFIXES:
            raise UnsafeFileError(
                f"{path}: pickle files can run code when loaded and are refused; a {what} is a "
                ".safetensors file (convert a state dict once with safetensors.torch.save_file)"
            ) from None
        raise InputError(f"cannot read {what} {path}: not a safetensors file, or truncated ({e})") from None
    if key is None:
        return SafetensorsFile(path, {}, shapes, dtypes)
    if key not in metadata:
        raise InputError(f"{path} is not a gradleak {what} (its header has no {key!r} entry)")
    return SafetensorsFile(path, parse_json(metadata[key], f"{what} {path}"), shapes, dtypes)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def brief(v: Any, n: int = 60) -> str:
    """``repr(v)`` cut to ``n`` characters, for messages about untrusted values."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


class Problems(list):
    """The problems found in one untrusted record; each ``check`` method returns the value or ``None``."""

    def get(self, d: dict[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
        v = d.get(key, MISSING)
        if v is MISSING and not optional:
            self.append(f"{where}{key}: missing")
        return None if v is MISSING else v

    def integer(
        self,
        d: dict[str, Any],
        key: str,
        lo: int,
        hi: int,
        where: str = "",
        *,
        nullable: bool = False,
        optional: bool = False,
    ) -> int | None:
        v = self.get(d, key, where, optional=optional or nullable)
        if v is None and (nullable or optional):
            return None
        if not (is_int(v) and lo <= v <= hi):
            if key in d:
                self.append(
                    f"{where}{key}: expected an integer in [{lo}, {hi}]{' or null' if nullable else ''}, got {brief(v)}"
                )
            return None
        return v

    def number(self, d: dict[str, Any], key: str, lo: float, hi: float, where: str = "") -> float | None:
        v = self.get(d, key, where)
        if not (is_number(v) and lo <= v <= hi):
            if key in d:
                self.append(f"{where}{key}: expected a finite number in [{lo}, {hi}], got {brief(v)}")
            return None
        return float(v)

    def boolean(self, d: dict[str, Any], key: str, where: str = "") -> bool | None:
        v = self.get(d, key, where)
        if not isinstance(v, bool):
            if key in d:
                self.append(f"{where}{key}: expected true or false, got {brief(v)}")
            return None
        return v

    def string(
        self,
        d: dict[str, Any],
        key: str,
        where: str = "",
        *,
        max_len: int = 256,
        choices: tuple[str, ...] | None = None,
    ) -> str | None:
        v = self.get(d, key, where)
        if not (isinstance(v, str) and 0 < len(v) <= max_len and (choices is None or v in choices)):
            if key in d:
                want = f"one of {list(choices)}" if choices else f"a string of 1..{max_len} characters"
                self.append(f"{where}{key}: expected {want}, got {brief(v)}")
            return None
        return v

    def int_list(
        self, d: dict[str, Any], key: str, lo: int, hi: int, lengths: tuple[int, int], where: str = ""
    ) -> list[int] | None:
        v = self.get(d, key, where)
        if not (
            isinstance(v, list) and lengths[0] <= len(v) <= lengths[1] and all(is_int(x) and lo <= x <= hi for x in v)
        ):
            if key in d:
                self.append(
                    f"{where}{key}: expected a list of {lengths[0]}..{lengths[1]} integers in [{lo}, {hi}], "
                    f"got {brief(v)}"
                )
            return None
        return v

    def obj(self, d: dict[str, Any], key: str, where: str = "", *, nullable: bool = False) -> dict[str, Any] | None:
        v = self.get(d, key, where, optional=nullable)
        if v is None and nullable:
            return None
        if not isinstance(v, dict):
            if key in d:
                self.append(f"{where}{key}: expected a JSON object{' or null' if nullable else ''}, got {brief(v)}")
            return None
        return v

    def only(self, d: dict[str, Any], allowed: set[str], where: str = "") -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            self.append(f"{where}unknown field(s) {brief(extra)}")

    def raise_if_any(self, message: str, limit: int = 40) -> None:
        """Raise one InputError listing the problems (the first ``limit`` and a count of the rest)."""
        if self:
            more = [f"... and {len(self) - limit} more"] if len(self) > limit else []
            raise InputError(message, self[:limit] + more)


def shape_problems(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], where: str = "") -> list[str]:
    """Every tensor of ``want`` that ``have`` misses or shapes differently, and every one it adds."""
    return (
        [f"{where}{k}: missing" for k in sorted(set(want) - set(have))]
        + [f"{where}{k}: not expected here" for k in sorted(set(have) - set(want))]
        + [
            f"{where}{k}: shape {list(have[k])} in the file, {list(want[k])} expected"
            for k in sorted(set(want) & set(have))
            if tuple(have[k]) != tuple(want[k])
        ]
    )


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of ``module.state_dict()``."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def finite_problems(tensors: dict[str, Tensor], where: str = "") -> list[str]:
    """One problem per floating tensor holding NaN or inf, naming it."""
    return [
        f"{where}{k}: contains NaN or inf"
        for k, v in sorted(tensors.items())
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
