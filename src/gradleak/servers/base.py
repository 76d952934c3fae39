"""What a malicious server does to the model it sends: the :class:`ServerStrategy` interface and its registry.

An honest-but-curious server sends the global model unchanged and only looks at the updates. A malicious
server changes the model first (inserts an imprint block, plants trap weights, sets fishing parameters) so
that the update leaks more. A strategy returns the modified model plus a JSON record of what it did; the
record travels in :attr:`gradleak.observation.Observation.server`, where the matching recovery attack and the
report read it (the server knows what it sent, so nothing there is an oracle input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import InputError
from ..normalization import Normalization
from ..registry import Registry
from ..settings import NoSettings, configure, parse_settings

if TYPE_CHECKING:
    from ..observation import Observation

SERVERS: Registry[type[ServerStrategy]] = Registry("server strategy")
HONEST = "honest"
S = TypeVar("S", bound="type[ServerStrategy]")


def server(name: str) -> Callable[[S], S]:
    """Class decorator registering a :class:`ServerStrategy` under ``name``."""

    def add(cls: S) -> S:
        cls.name = name
        SERVERS.register(name)(cls)
        return cls

    return add


class ServerStrategy:
    """Base: ``Config`` is a frozen dataclass with the paper's defaults; :meth:`prepare` builds the sent model."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoSettings
    #: the sent model has the architecture it was given (only weights change): an observation of it still names
    #: the zoo model, and its file loads without the caller's model
    keeps_architecture: ClassVar[bool] = True

    def __init__(self, config: Any = None, **overrides: Any):
        self.config = configure(self.Config, config, overrides, f"server strategy {self.name!r}")

    def problems(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
        """Why this strategy cannot modify ``model`` (empty: it can)."""
        return []

    def check(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        problems = self.problems(model, input_shape=input_shape, num_classes=num_classes)
        if problems:
            raise InputError(f"server strategy {self.name!r} cannot modify this model", problems)

    def prepare(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalization: Normalization | None,
        generator: torch.Generator,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The model the server sends (a new module; ``model`` is not changed) and the JSON record of what was
        done (``{"name": ..., ...}``: everything the recovery needs, e.g. the inserted layer's name; a strategy
        that moves the classification head records its module path in the sent model as ``"head"``). Checks
        :meth:`problems` first (one InputError), then runs the strategy's :meth:`modify`."""
        self.check(model, input_shape=input_shape, num_classes=num_classes)
        return self.modify(
            model, input_shape=input_shape, num_classes=num_classes, normalization=normalization, generator=generator
        )

    def modify(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalization: Normalization | None,
        generator: torch.Generator,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """What :meth:`prepare` returns, for a model that passed :meth:`check` (each strategy's own work)."""
        raise NotImplementedError

    def observe(self, query: Callable[[ServerStrategy], Observation]) -> Observation:
        """What the server ends up with: ``query(strategy)`` is one round — the model ``strategy`` makes, sent to
        the same clients (their data fixed), and the aggregate of their updates. One round by default; a strategy
        that searches over rounds (fishing's cut search) queries several times."""
        return query(self)

    def to_json(self) -> dict[str, Any]:
        cfg = asdict(self.config) if is_dataclass(self.config) and not isinstance(self.config, type) else {}
        return {"name": self.name, **cfg}


def parse_server(spec: str) -> ServerStrategy | None:
    """A strategy from a spec such as ``imprint:bins=128`` (``honest``: ``None``, the model is sent unchanged)."""
    name, _, rest = spec.strip().partition(":")
    if name == HONEST:
        if rest:
            raise InputError("the honest server takes no parameters")
        return None
    cls = SERVERS.get(name)
    return cls(**parse_settings(f"server strategy {name!r}", rest, cls.Config))


def server_from_json(record: dict[str, Any] | None) -> ServerStrategy | None:
    """The strategy a :meth:`ServerStrategy.to_json` record — or an Observation's ``server`` record, which adds
    what :meth:`ServerStrategy.prepare` did (layer names, ...) — describes (``None``: honest)."""
    if record is None:
        return None
    cls = SERVERS.get(str(record.get("name")))
    settings = {f.name for f in fields(cls.Config)} if is_dataclass(cls.Config) else set()
    return cls(**{k: v for k, v in record.items() if k in settings})
