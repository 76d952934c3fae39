"""The ``auto`` label method: pick the best method for what the server observes — never the ground truth.

Observable facts only: the protocol (FedSGD gradient or FedAvg delta), the batch size (known or not), the
number of classes, whether the head has a bias, and the model itself — in particular its **confidence on dummy
inputs**: ``κ = (mean max softmax − 1/N) / (1 − 1/N)`` over 64 uniform inputs run as the client runs them
(:func:`dummy_confidence`). Preference (best first; the numbers are ``benchmarks/labels/results.md``: ConvNet
width 16 and ResNet-18, 10 classes, BN eval and train, B = 8/32/64, untrained or trained on a disjoint half):

1. one sample (B = 1 or unknown): ``wang2024`` — the rank-one head gradient gives the label exactly, soft or not.
   A recovered label within 1e-3 of a one-hot is reported as that hard label (``soft=None``), so a one-hot label
   is never called soft; if the necessary condition fails, ``idlg`` (exact for a hard label).
2. a FedAvg delta with a head bias: ``fedavg`` (replays the head's path over the K local steps).
3. a FedSGD gradient, B > 1, **fresh model** (κ < 0.4; measured 0.00–0.23 on the untrained models). The counts
   are ``B (p̄ − g_b)``, so what matters is the estimate of the batch's mean prediction ``p̄``. With BatchNorm in
   train mode and κ < 0.2 (ResNet-18 at init: 0.09–0.16), every batch — dummy or real — is normalised alike and
   dummy inputs give ``p̄`` exactly: ``llg-whitebox`` (1.000 at B = 8/32/64, and 0.992 at B = 128 against the
   official iLRG harness, where ``ilrg-lsq`` has 0.867 / 0.953 / 0.963), then ``ilrg-lsq``. Otherwise (BN eval,
   or the ConvNet in BN train, κ 0.23) the gradient's own mean-embedding estimate is as good or better:
   ``ilrg-lsq`` (ConvNet BN train 0.945 / 0.930 vs 0.922 at B = 32 / 64; ResNet-18 BN eval with iLRG's init
   0.994 vs 0.969 at B = 32), then ``llg-whitebox``. The published ``ilrg`` falls to 0.86–0.89 with BN in train
   mode (class-wise embeddings break where ``g_b[c] ≈ 0``). The 0.2 boundary lies between two measured
   architectures (0.16 and 0.23): a thin margin.
4. a FedSGD gradient, B > 1, **trained model** (κ ≥ 0.4; measured 0.56–0.99): a confident model predicts its
   batch, so ``p̄`` is close to the label histogram and neither dummy inputs nor class-wise embeddings reveal
   it. What is left: a negative weight-gradient entry still proves a class present, whatever the model predicts:
   ``min-rule-counts`` (those classes and the ones the bias counts show, one label each, the repeats by the bias
   counts), then the bias counts alone (``llg-bias-corrected``).
5. then the rest: ``ilrg-lsq``, ``llg-whitebox``, ``llg-bias-corrected``, ``llg-simple``, the distinct-label rules
   ``gradinversion-min`` and ``sum``, ``idlg``.

Measured (``benchmarks/labels``, 4 trials per cell, labels with repeats, B = 8/32/64): see its results.md for
``auto`` against every method in every cell. Known weakness: between fresh and trained (κ ≈ 0.3–0.6, partly
trained models) no single method wins consistently, and both thresholds are single numbers between measured ranges.

A count that leaves out a class the gradient proves present (a negative head-weight entry, non-negative
features) is replaced by ``min-rule-counts``: κ misreads some trained models as fresh (Fashion-MNIST ConvNet in
BN eval: κ 0.34, ``ilrg-lsq`` 0.38–0.48 against 0.81–0.85), and the proof of presence catches it; no untrained
cell of the benchmark triggers it.

A method is skipped if it is not registered or its ``problems(obs)`` are not empty; at run time a method that
refuses hands over to the next. The result says which method ran and why: ``LabelResult.method`` and
``details["auto"]``.
"""

from __future__ import annotations

import torch

from ..errors import GradleakError, UnsupportedError
from ..observation import Observation
from .augmented import EXACT_TOL
from .base import LABEL_METHODS, LabelMethod, LabelResult, label_method
from .probe import probe

#: normalised dummy-input confidence above which the model counts as trained (see the module docstring)
TRAINED_CONFIDENCE = 0.4
#: below this dummy-input confidence a fresh model's predictions barely depend on its input (see the docstring)
NEAR_UNIFORM = 0.2
PROBE_INPUTS = 64


def dummy_confidence(obs: Observation) -> float:
    """The model's confidence on dummy inputs relative to chance: ``(mean max p − 1/N) / (1 − 1/N)`` ∈ [0, 1]
    over 64 uniform inputs (seed 0) run as the client runs them (BatchNorm in the observation's mode)."""
    p = probe(obs, PROBE_INPUTS, generator=torch.Generator().manual_seed(0)).probs
    n = obs.num_classes
    return max(0.0, (float(p.max(1).values.mean()) - 1.0 / n) / (1.0 - 1.0 / n))


def candidates(obs: Observation) -> list[tuple[str, str]]:
    """``(method, reason)`` in order of preference for this observation."""
    has_bias = obs.head_grads()[1] is not None
    B = obs.batch_size
    prefs: list[tuple[str, str]] = []
    if B == 1 or B is None:
        prefs.append(("wang2024", "one sample: exact (soft) label from the rank-one head gradient"))
        prefs.append(("idlg", "one sample: the iDLG sign rule is exact for a hard label"))
    if obs.kind == "delta" and has_bias:
        prefs.append(
            (
                "fedavg",
                f"FedAvg delta ({getattr(obs.protocol, 'local_steps', '?')} local steps) with a "
                "head bias: counts with the head's path replayed",
            )
        )
    if B is not None and B > 1 and obs.kind == "gradient":
        kappa = dummy_confidence(obs)
        if kappa >= TRAINED_CONFIDENCE:
            why = (
                f"trained model (confidence on dummy inputs {kappa:.2f} ≥ {TRAINED_CONFIDENCE} above chance): "
                "its batch's predicted mass is close to the label histogram, which neither dummy inputs nor "
                "class-wise embeddings reveal"
            )
            prefs.append(("min-rule-counts", why + "; the classes shown present, repeats by the bias counts"))
            prefs.append(("llg-bias-corrected", why + "; counts from the bias gradient with a uniform offset"))
        else:
            why = f"fresh model (confidence on dummy inputs {kappa:.2f} < {TRAINED_CONFIDENCE} above chance)"
            lsq = ("ilrg-lsq", why + ": counts from the gradient's own mean-embedding estimate")
            white = ("llg-whitebox", why + ": dummy inputs estimate the batch's mean prediction")
            near_uniform = obs.bn_train and kappa < NEAR_UNIFORM
            if near_uniform:
                white = (
                    white[0],
                    white[1] + f" (BN in train mode, κ < {NEAR_UNIFORM}: dummies predict like the batch)",
                )
            prefs += [white, lsq] if near_uniform else [lsq, white]
    prefs += [
        ("ilrg-lsq", "counts with repeats (least-squares mean embedding)"),
        ("llg-whitebox", "count strategy with the known model (LLG*)"),
        ("llg-bias-corrected", "count strategy from the bias gradient"),
        ("llg-simple", "count strategy from weight-gradient magnitudes"),
        ("min-rule-counts", "the classes shown present, repeats by the bias counts"),
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


def is_soft(y: torch.Tensor) -> bool:
    """Whether a recovered label is soft: it departs from the one-hot of its top class by more than the
    exactness tolerance (a label within it of one-hot is reported as that hard label, still exact)."""
    onehot = torch.zeros_like(y)
    onehot[int(y.argmax())] = 1.0
    return float((y - onehot).abs().max()) > EXACT_TOL


def choose(obs: Observation) -> tuple[str, str]:
    """The first candidate whose declared needs the observation meets: ``(method, reason)``."""
    unmet = []
    for name, why in candidates(obs):
        problems = LABEL_METHODS.get(name)().problems(obs)
        if not problems:
            return name, why
        unmet.append(f"{name}: {'; '.join(problems)}")
    raise UnsupportedError("auto", unmet or ["no label method is registered"])


def presence_checked(obs: Observation, res: LabelResult, name: str, why: str) -> tuple[LabelResult, str, str]:
    """``min-rule-counts`` instead of a count that leaves out a class the gradient proves present (a negative
    head-weight entry, with non-negative features) — the fresh-model estimates fail that way when κ misreads
    a trained model (measured on Fashion-MNIST victims, see benchmarks/labels)."""
    if obs.batch_size in (None, 1) or name == "min-rule-counts" or "min-rule-counts" not in LABEL_METHODS:
        return res, name, why
    mrc = LABEL_METHODS.get("min-rule-counts")()
    if mrc.problems(obs):
        return res, name, why
    alt = mrc.recover(obs)
    missing = sorted(set(alt.details["negative_entry_classes"]) - set(res.labels))
    if not missing:
        return res, name, why
    return (
        alt,
        "min-rule-counts",
        (
            f"{why}; but {name} left out class(es) {missing} that a negative head-weight entry proves present: "
            "the classes shown present, repeats by the bias counts"
        ),
    )


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
            res, name, why = presence_checked(obs, res, name, why)
            res.details["auto"] = {"picked": name, "reason": why, "skipped": tried}
            if res.soft is not None and not is_soft(res.soft[0]):
                res.soft = None  # a one-hot label: report the hard label only
                res.details["auto"]["reason"] += f"; the recovered label is one-hot within {EXACT_TOL:g}: hard"
            return res
        raise UnsupportedError("auto", [f"{t['method']}: {t.get('skipped') or t.get('refused')}" for t in tried])
