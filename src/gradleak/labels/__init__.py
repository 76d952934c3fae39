"""Label recovery: one module per method, one registry (``LABEL_METHODS``).

Every module of this package is imported on first use so its ``@label_method`` registrations run.
"""
from __future__ import annotations

import sys

from ..plugins import import_submodules
from .base import LABEL_METHODS, LabelMethod, LabelResult, head_gradient, label_method

__all__ = ["LABEL_METHODS", "LabelMethod", "LabelResult", "head_gradient", "label_method", "recover_labels"]


def recover_labels(obs, method: str = "auto", **kwargs) -> LabelResult:
    """Run one label method by name; ``auto`` picks by what the server observes (:mod:`.auto`) and records
    its choice in ``details["auto"]``."""
    if method == "auto" and not kwargs:
        from .auto import recover_auto
        return recover_auto(obs)
    if method == "auto":
        from .auto import choose
        method = choose(obs)[0]
    return LABEL_METHODS.get(method)(**kwargs).recover(obs)


import_submodules(sys.modules[__name__])
