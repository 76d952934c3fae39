"""The ``auto`` label method: pick the best method for what the server observes — never the ground truth.

Observable facts only: the protocol (FedSGD gradient or FedAvg delta), the batch size (known or not), the
number of classes and whether the head has a bias. Preference (best first; the benchmark
``benchmarks/labels_vs_official`` gives the numbers behind it):

1. one sample (B = 1): ``idlg`` (exact sign rule);
2. a FedAvg delta with a head bias: ``fedavg`` (replays the head's path over the K local steps);
3. a FedSGD gradient with BatchNorm in train mode: ``llg-whitebox`` (its dummy-input probe sees batch
   statistics like the client's; it beat iLRG at B=128 there and tied below);
4. a head bias, or no bias with ``B < N``: ``ilrg`` (counts with repeats; checks its rank condition);
5. ``llg-whitebox``, ``llg-bias-corrected``, ``llg-simple`` (counts from gradient magnitudes), then the
   distinct-label rules ``gradinversion-min`` and ``sum``.

A method is skipped if it is not registered or its ``problems(obs)`` are not empty; at run time a method that
refuses (e.g. iLRG's rank condition fails on a saturated model) hands over to the next. The result says
which method ran and why: ``LabelResult.method`` and ``details["auto"]``.
"""

from __future__ import annotations

import torch

from ..errors import GradleakError, UnsupportedError
from ..observation import Observation
from .base import LABEL_METHODS, LabelMethod, LabelResult, label_method


def candidates(obs: Observation) -> list[tuple[str, str]]:
    """``(method, reason)`` in order of preference for this observation."""
    has_bias = obs.head_grads()[1] is not None
    B, N = obs.batch_size, obs.num_classes
    prefs: list[tuple[str, str]] = []
    if B == 1:
        prefs.append(("idlg", "one sample: the iDLG sign rule is exact"))
    if obs.kind == "delta" and has_bias:
        prefs.append(
            (
                "fedavg",
                f"FedAvg delta ({getattr(obs.protocol, 'local_steps', '?')} local steps) with a "
                "head bias: counts with the head's path replayed",
            )
        )
    if obs.kind == "gradient" and obs.bn_train and B is not None and B > 1:
        prefs.append(
            (
                "llg-whitebox",
                "BatchNorm in train mode: dummy inputs through the batch-statistics model "
                "estimate the batch's mean prediction best (benchmark: ResNet-18, B=128: "
                "0.99 vs iLRG 0.96)",
            )
        )
    if has_bias:
        prefs.append(("ilrg", "head bias observed: iLRG counts (repeats allowed), rank condition checked"))
    elif B is not None and B < N:
        prefs.append(("ilrg", "no head bias but B < N: iLRG counts with the bias gradient estimated"))
    prefs += [
        ("llg-whitebox", "count strategy with the known model (LLG*)"),
        ("llg-bias-corrected", "count strategy from the bias gradient"),
        ("llg-simple", "count strategy from weight-gradient magnitudes"),
        ("gradinversion-min", "distinct labels (min rule)"),
        ("sum", "distinct labels (sum rule)"),
        ("idlg", "single-label sign rule"),
    ]
    seen: set[str] = set()
    out = []
    for name, why in prefs:
        if name not in seen and name in LABEL_METHODS:
            seen.add(name)
            out.append((name, why))
    return out


def choose(obs: Observation) -> tuple[str, str]:
    """The first candidate whose declared needs the observation meets: ``(method, reason)``."""
    unmet = []
    for name, why in candidates(obs):
        problems = LABEL_METHODS.get(name)().problems(obs)
        if not problems:
            return name, why
        unmet.append(f"{name}: {'; '.join(problems)}")
    raise UnsupportedError("auto", unmet or ["no label method is registered"])


@label_method("auto")
class Auto(LabelMethod):
    """Runs the preferred method for what the server observes (see the module docstring); if it refuses at
    run time, the next one. ``LabelResult.method`` names the method that ran, ``details["auto"]`` why."""

    paper = "gradleak: a published method chosen from what the server observes (no ground truth)"

    def problems(self, obs: Observation) -> list[str]:
        try:
            choose(obs)
        except UnsupportedError as e:
            return e.problems
        return []

    def recover(self, obs: Observation, *, generator: torch.Generator | None = None) -> LabelResult:
        tried: list[dict[str, str]] = []
        for name, why in candidates(obs):
            method = LABEL_METHODS.get(name)()
            problems = method.problems(obs)
            if problems:
                tried.append({"method": name, "skipped": "; ".join(problems)})
                continue
            try:
                res = method.recover(obs, generator=generator)
            except GradleakError as e:
                tried.append({"method": name, "refused": str(e)})
                continue
            res.details["auto"] = {"picked": name, "reason": why, "skipped": tried}
            return res
        raise UnsupportedError("auto", [f"{t['method']}: {t.get('skipped') or t.get('refused')}" for t in tried])
