"""Malicious server strategies: what a server may do to the model it sends (honest: nothing)."""

from .base import HONEST, SERVERS, ServerStrategy, parse_server, server, server_from_json
from .fishing import Fishing  # noqa: F401  (registers "fishing")
from .trap import TrapWeights  # noqa: F401  (registers "trap")

__all__ = ["HONEST", "SERVERS", "ServerStrategy", "parse_server", "server", "server_from_json"]
