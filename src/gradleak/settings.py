"""Settings of methods: a frozen dataclass with the paper's defaults, overridden by keyword.

Every attack and label method takes ``(config=None, **overrides)``; an override that names no field of
its settings is an :class:`~gradleak.errors.InputError` naming the method and the setting (never
silently dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

from .errors import InputError

C = TypeVar("C")


@dataclass(frozen=True)
class NoSettings:
    """The method has no settings."""


def setting_names(config_type: type) -> list[str]:
    return [f.name for f in fields(config_type)] if is_dataclass(config_type) else []


def configure(config_type: type[C], config: C | None, overrides: dict[str, Any], owner: str) -> C:
    """``config`` (default: ``config_type()``) with ``overrides`` applied by :func:`dataclasses.replace`."""
    base = config if config is not None else config_type()
    if not overrides:
        return base
    known = setting_names(config_type)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        have = f"its settings: {', '.join(known)}" if known else "it has no settings"
        raise InputError(f"{owner} has no setting {', '.join(map(repr, unknown))} ({have})")
    return replace(base, **overrides)  # type: ignore[type-var]


def parse_settings(owner: str, text: str, config_type: type) -> dict[str, Any]:
    """Settings from ``KEY=VALUE`` pairs separated by commas (the part of a spec such as ``imprint:bins=128`` after
    the colon), each value converted to the type of the field of ``config_type`` it names (int, float, bool or
    str); anything else is an InputError naming ``owner``."""
    types = {f.name: str(f.type) for f in fields(config_type)} if is_dataclass(config_type) else {}
    settings: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in types:
            raise InputError(f"{owner}: expected KEY=VALUE with KEY in {sorted(types)}, got {part!r}")
        settings[key] = _typed(owner, key, value.strip(), types[key])
    return settings


def _typed(owner: str, key: str, value: str, type_name: str) -> Any:
    kind = next((k for k in ("int", "float", "bool", "str") if type_name.startswith(k)), None)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
    except ValueError:
        raise InputError(f"{owner}: {key}={value!r} is not of type {type_name}") from None
    if kind is None:
        raise InputError(f"{owner}: {key} ({type_name}) cannot be given in a spec")
    return value
