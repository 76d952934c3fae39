"""Label recovery: one module per method, one registry (``LABEL_METHODS``).

Every module of this package is imported on first use so its ``@label_method`` registrations run.
"""
from __future__ import annotations

import sys
from typing import Any

from ..observation import Observation
from ..plugins import import_submodules
from .base import LABEL_METHODS, LabelMethod, LabelResult, head_gradient, label_method

__all__ = ["LABEL_METHODS", "LabelMethod", "LabelResult", "head_gradient", "label_method", "recover_labels"]


def recover_labels(obs: Observation, method: str = "auto", **settings: Any) -> LabelResult:
    """Run one label method by name (``auto``: the best for what the server observes, see :mod:`.auto`)."""
    return LABEL_METHODS.get(method)(**settings).recover(obs)


import_submodules(sys.modules[__name__])
