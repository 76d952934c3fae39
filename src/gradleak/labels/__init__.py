"""Label recovery: one module per method, one registry (``LABEL_METHODS``).

Every module of this package is imported on first use so its ``@label_method`` registrations run.
"""

from __future__ import annotations

import sys
from typing import Any

from ..observation import Observation
from ..plugins import import_submodules
from .base import LABEL_METHODS, LabelMethod, LabelResult, head_gradient, label_method


def recover_labels(obs: Observation, method: str = "auto", **settings: Any) -> LabelResult:
    """Run one label method by name (``auto``: the best for what the server observes, see :mod:`.auto`)."""
    return LABEL_METHODS.get(method)(**settings).recover(obs)


import_submodules(sys.modules[__name__])

from .augmented import Wang2024  # noqa: E402  (the registrations above import every method module once)
from .auto import Auto  # noqa: E402
from .fedavg import FedAvgLabels  # noqa: E402
from .gradinversion_min import GradInversionMin  # noqa: E402
from .idlg import IDLG  # noqa: E402
from .ilrg import ILRG  # noqa: E402
from .ilrg_lsq import ILRGLsq  # noqa: E402
from .llg import LLGBiasCorrected, LLGSimple, LLGWhitebox  # noqa: E402
from .min_counts import MinRuleCounts  # noqa: E402
from .sum_rule import SumRule  # noqa: E402

__all__ = [
    "IDLG",
    "ILRG",
    "ILRGLsq",
    "LABEL_METHODS",
    "Auto",
    "FedAvgLabels",
    "GradInversionMin",
    "LLGBiasCorrected",
    "LLGSimple",
    "LLGWhitebox",
    "LabelMethod",
    "LabelResult",
    "MinRuleCounts",
    "SumRule",
    "Wang2024",
    "head_gradient",
    "label_method",
    "recover_labels",
]
