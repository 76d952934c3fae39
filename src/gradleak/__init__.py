"""gradleak: audit how much private training data leaks from federated-learning updates.

The public API, for ``import gradleak as gl``::

    obs, truth = gl.simulate(gl.Scenario(batch_size=4))                 # what the server sees + the batch
    plan = gl.AuditPlan(attacks=(gl.attacks.InvertingGradients(iterations=300),))
    result = gl.audit(obs, plan, truth=truth)                            # typed, frozen AuditResult
    result.attacks[0].scores.mean_psnr, result.labels.chosen.method, result.verdict.level

Names resolve on first use, so ``gradleak --help`` does not import torch's model zoo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "Scenario": "scenario",
    "GroundTruth": "scenario",
    "simulate": "scenario",
    "Observation": "observation",
    "AuditPlan": "auditing",
    "audit": "auditing",
    "audit_scenario": "auditing",
    "make_attacks": "auditing",
    "AuditResult": "results",
    "AttackRun": "results",
    "LabelRun": "results",
    "LabelSection": "results",
    "Verdict": "results",
    "FedSGD": "protocols",
    "FedAvg": "protocols",
    "parse_defense": "defenses",
    "recover_labels": "labels",
    "LABEL_METHODS": "labels",
    "ATTACKS": "attacks",
    "GradleakError": "errors",
    "InputError": "errors",
    "UnsupportedError": "errors",
}
_SUBPACKAGES = ("attacks", "labels", "defenses", "metrics", "models", "data", "report")

__all__ = [
    "ATTACKS",
    "LABEL_METHODS",
    "AttackRun",
    "AuditPlan",
    "AuditResult",
    "FedAvg",
    "FedSGD",
    "GradleakError",
    "GroundTruth",
    "InputError",
    "LabelRun",
    "LabelSection",
    "Observation",
    "Scenario",
    "UnsupportedError",
    "Verdict",
    "__version__",
    "attacks",
    "audit",
    "audit_scenario",
    "data",
    "defenses",
    "labels",
    "make_attacks",
    "metrics",
    "models",
    "parse_defense",
    "recover_labels",
    "report",
    "simulate",
]

if TYPE_CHECKING:
    from . import attacks, data, defenses, labels, metrics, models, report
    from .attacks import ATTACKS
    from .auditing import AuditPlan, audit, audit_scenario, make_attacks
    from .defenses import parse_defense
    from .errors import GradleakError, InputError, UnsupportedError
    from .labels import LABEL_METHODS, recover_labels
    from .observation import Observation
    from .protocols import FedAvg, FedSGD
    from .results import AttackRun, AuditResult, LabelRun, LabelSection, Verdict
    from .scenario import GroundTruth, Scenario, simulate


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
