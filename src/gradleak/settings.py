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
