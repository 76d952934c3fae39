"""Malicious server strategies: what a server may do to the model it sends (honest: nothing)."""

from .base import HONEST, SERVERS, ServerStrategy, parse_server, server, server_from_json
from .fishing import Fishing
from .imprint import Imprint
from .trap import TrapWeights

__all__ = [
    "HONEST",
    "SERVERS",
    "Fishing",
    "Imprint",
    "ServerStrategy",
    "TrapWeights",
    "parse_server",
    "server",
    "server_from_json",
]
