"""Malicious server strategies: what a server may do to the model it sends (honest: nothing)."""

from .base import HONEST, SERVERS, ServerStrategy, parse_server, server, server_from_json
from .imprint import Imprint

__all__ = ["HONEST", "SERVERS", "Imprint", "ServerStrategy", "parse_server", "server", "server_from_json"]
