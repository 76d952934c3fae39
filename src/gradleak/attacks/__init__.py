"""Attacks: one module per paper, one registry (``ATTACKS``), one shared matching engine.

Every module of this package is imported on first use so its ``@attack`` registrations run.
"""
from __future__ import annotations

import sys

from ..plugins import import_submodules
from .base import ATTACKS, Attack, AttackResult, Step, attack

__all__ = ["ATTACKS", "Attack", "AttackResult", "Step", "attack"]

import_submodules(sys.modules[__name__])
