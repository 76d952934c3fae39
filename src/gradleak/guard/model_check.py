"""Checks a client runs on the global model it receives, before it trains on it: does the model have the structure
that malicious-server attacks need to pull single samples out of an update?

Garov, Dimitrov, Jovanović & Vechev, "Hiding in Plain Sight: Disguising Data Stealing Attacks in Federated
Learning", ICLR 2024 (arXiv:2306.03013; PAPERS.md §10) argue that the malicious-server attacks of the time
(imprint, trap weights, fishing; §7-9) fail principled client-side checks; two of theirs are here as they
define them, the others check the structure each family of attacks needs:

- ``dsnr`` (SEER's D-SNR): per-example gradients on the client's batch; for every conv/linear weight ``W``,
  ``max_i ‖∂ℓ_i/∂W‖ / (Σ_j ‖∂ℓ_j/∂W‖ − max_i ‖∂ℓ_i/∂W‖)``; the value is the max over weights. Large when one
  sample's gradient dominates a layer — the point of fishing (all other samples' gradients switched off).
- ``transmit_snr`` (SEER's transmit-SNR): over the rows (kernels) of the first conv/linear layer,
  ``max |w| / (Σ|w| − max |w|)``; large for a pass-through (Dirac-like) kernel that copies one input value.
- ``relu_sparsity``: the share of the first ReLU layer's outputs on the batch that are zero. A unit that fires for
  one sample alone has that sample, times a scalar, as its gradient row (``x = ∂L/∂W_n / ∂L/∂b_n``, PAPERS.md §3);
  trap weights (§8) push the pre-activations negative so that units fire rarely and many fire for ≤ 1 sample. At
  random or briefly trained weights pre-activations are centred and a ReLU layer is active about half the time.
  (The share of units firing for exactly one sample measures the same thing but depends on the batch size; the
  sparsity does not.)
- ``collinear_rows``: the largest ``|cos|`` between two rows (kernels) of the first conv/linear layer. Units
  that measure one direction with staggered biases bin the batch along it, and differences of adjacent bins
  isolate samples — the imprint module's construction (§7); random or briefly trained rows are far from parallel.
- ``head_rows``: the share of the classification head's rows that are zero (below 1e-6 of the largest row
  norm): a zeroed class cannot pass gradient to the features — how class fishing (§9) silences all but the
  target class.
- ``head_bias``: the spread of the head's bias (max − min) over the spread of its weight term ``W h`` on the
  client's batch (mean over samples of max − min over classes): the bias, not the input, decides the logits
  — fishing's bias of 1000 on every other class.
- ``architecture`` (with ``reference_architecture``): the parameter and buffer names and shapes equal the
  agreed model's; the value is the number of entries that differ (an inserted imprint block changes them).

**Calibration** (``benchmarks/guard/run.py``, section ``honest``): honest zoo models — mlp (width 64 and 256),
lenet, convnet (width 16; BatchNorm in eval and in train mode), cnn6, fcn3 on bundled digits and photos, resnet18
(CIFAR stem) on photos — seeds 0-2, each at its seeded initialisation and after 10 SGD steps (lr 0.05) on other
batches: 90 models, checked on client batches of 8 and 16 (resnet18: 8) drawn as a data loader draws them, no
false alarm. Largest honest values (``benchmarks/guard/results.md``): D-SNR 4.4, transmit-SNR 0.51, ReLU sparsity
0.55, collinearity 0.88 (3×3 kernels on one channel: 9-dimensional rows), no zeroed head row, head bias 2.7. Each
default threshold is a round number above them with a meaning: D-SNR 10 (one sample's gradient outweighs all the
others' together ten times); transmit-SNR 1 (SEER's code flags > 1); sparsity 0.65 (the layer is active for under
35% of its outputs); rows parallel to 1e-3; any zeroed head row; a bias spread 20 times the input term's. No
threshold depends on an attack's constants.

**Limits.** Calibrated on models at or near initialisation: a long-trained MLP's first layer grows sparse (digits,
400 SGD steps: 8% of its outputs active, a quarter of its active units firing for one sample) and trips
``relu_sparsity`` — rightly in that such a layer does isolate samples, but it is no sign of a malicious server.
D-SNR depends on the batch as well: one badly classified sample among well-classified ones raises it on an
honest model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..models import find_head

__all__ = ["Check", "ModelCheck", "ModelCheckThresholds", "architecture_check", "model_check"]

EPS = 1e-6  # SEER's guard against a zero denominator; also what "zero" means relative to the largest row


@dataclass(frozen=True, kw_only=True)
class ModelCheckThresholds:
    """A check fires when its value exceeds its threshold (see the module docstring for the calibration)."""

    dsnr: float = 10.0
    transmit_snr: float = 1.0
    relu_sparsity: float = 0.65
    collinear_rows: float = 0.999
    head_rows: float = 0.0
    head_bias: float = 20.0

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)):
                problems.append(f"{f.name}: expected a finite number, got {v!r}")
            elif f.name in ("relu_sparsity", "collinear_rows", "head_rows") and not 0 <= v < 1:
                problems.append(f"{f.name} is a share or a cosine in [0, 1), got {v}")
            elif f.name in ("dsnr", "transmit_snr", "head_bias") and not v > 0:
                problems.append(f"{f.name} must be > 0, got {v}")
        if problems:
            raise InputError("bad model-check thresholds", problems)


@dataclass(frozen=True)
class Check:
    """One check: its value (``None`` when it does not apply to this model), threshold and where it was taken."""

    name: str
    value: float | None
    threshold: float
    where: str = ""

    @property
    def fired(self) -> bool:
        return self.value is not None and self.value > self.threshold

    def describe(self) -> str:
        if self.value is None:
            return f"{self.name}: not applicable ({self.where})"
        verdict = "FIRED" if self.fired else "ok"
        at = f" at {self.where}" if self.where else ""
        return f"{self.name} {verdict}: {self.value:.4g} vs threshold {self.threshold:.4g}{at}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "where": self.where,
            "fired": self.fired,
        }


@dataclass(frozen=True)
class ModelCheck:
    """Every check's result; the model passes when none fired."""

    checks: tuple[Check, ...]
    batch_size: int = 0

    @property
    def fired(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.fired)

    @property
    def passed(self) -> bool:
        return not self.fired

    def value(self, name: str) -> float | None:
        """The value of check ``name`` (``None``: not applicable or not run)."""
        return next((c.value for c in self.checks if c.name == name), None)

    def summary(self) -> str:
        """One line: the checks that fired (or that all passed)."""
        if self.passed:
            return f"the received model passed {sum(c.value is not None for c in self.checks)} checks"
        return "the received model failed: " + "; ".join(c.describe() for c in self.fired)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "batch_size": self.batch_size, "checks": [c.to_json() for c in self.checks]}


# -------------------------------------------------------------------------------------------- statistics
def architecture_check(
    state: Mapping[str, Tensor], reference: nn.Module | Mapping[str, Tensor], threshold: float = 0.0
) -> Check:
    """How many state entries (names and shapes, parameters and buffers) differ from the agreed architecture."""
    want = reference.state_dict() if isinstance(reference, nn.Module) else reference
    have = {k: tuple(v.shape) for k, v in state.items()}
    ref = {k: tuple(v.shape) for k, v in want.items()}
    missing, extra = sorted(set(ref) - set(have)), sorted(set(have) - set(ref))
    reshaped = sorted(k for k in set(ref) & set(have) if ref[k] != have[k])
    where = ", ".join(
        f"{what} {names[:3]}" for what, names in (("missing", missing), ("new", extra), ("reshaped", reshaped)) if names
    )
    return Check("architecture", float(len(missing) + len(extra) + len(reshaped)), threshold, where)


def _dsnr(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, str]:
    """SEER's D-SNR from the per-example gradients ``∂ℓ_i/∂W`` of every conv/linear weight, max over weights.

    With BatchNorm in train mode the samples are coupled through the batch statistics: the gradients are then
    taken from one batched forward pass (``is_grads_batched``, as SEER's code does). Otherwise each sample's
    forward pass is independent and one pass per sample gives the same numbers 5-10 times faster. A weight the
    loss does not use (a layer the forward pass skips) has zero gradients."""
    named = {
        f"{name}.weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.requires_grad
    }
    weights = list(named.values())
    coupled = any(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    if coupled:
        losses = per_sample_loss(model(x), y)
        eye = torch.eye(len(x), dtype=losses.dtype)
        batched = torch.autograd.grad(losses, weights, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        norms = [torch.zeros(len(x)) if g is None else g.detach().flatten(1).double().norm(dim=1) for g in batched]
    else:
        per_sample = [
            torch.autograd.grad(per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum(), weights, allow_unused=True)
            for i in range(len(x))
        ]
        norms = [
            torch.tensor([0.0 if g[k] is None else float(g[k].detach().double().norm()) for g in per_sample])
            for k in range(len(weights))
        ]
    best, where = -1.0, ""
    for name, n in zip(named, norms):
        top = float(n.max())
        value = top / (float(n.sum()) - top + EPS)
        if value > best:
            best, where = value, name
    return best, where


def per_sample_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per sample for hard (int64) or soft (float) targets."""
    if y.dtype.is_floating_point:
        return -(y * F.log_softmax(logits, dim=-1)).sum(-1)
    return F.cross_entropy(logits, y, reduction="none")


@dataclass
class _Forward:
    """What one forward pass shows: the logits, the first conv/linear layer called, the first ReLU's output and
    every Linear layer's input."""

    logits: Tensor
    first: tuple[str, nn.Module] | None
    relu: Tensor | None
    linear_inputs: dict[nn.Module, Tensor]


def _forward(model: nn.Module, x: Tensor) -> _Forward:
    names = {m: n for n, m in model.named_modules()}
    first: list[nn.Module] = []
    relu: list[Tensor] = []
    inputs: dict[nn.Module, Tensor] = {}

    def affine(m: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
        first.append(m)
        if isinstance(m, nn.Linear):
            inputs.setdefault(m, inp[0].detach())

    def activation(_m: nn.Module, _inp: Any, out: Tensor) -> None:
        relu.append(out.detach())

    hooks = [
        m.register_forward_hook(affine if isinstance(m, (nn.Linear, nn.Conv2d)) else activation)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ReLU))
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return _Forward(logits, (names[first[0]], first[0]) if first else None, relu[0] if relu else None, inputs)


def _rows(layer: nn.Module) -> Tensor:
    return layer.weight.detach().flatten(1).double()  # type: ignore[operator]


def _transmit_snr(layer: nn.Module) -> float:
    w = _rows(layer).abs()
    top = w.max(dim=1).values
    return float((top / (w.sum(dim=1) - top + EPS)).max())


def _collinear(layer: nn.Module) -> float | None:
    w = _rows(layer)
    w = w[w.norm(dim=1) > 0]
    if len(w) < 2:
        return None
    u = w / w.norm(dim=1, keepdim=True)
    cos = (u @ u.T).abs()
    cos.fill_diagonal_(0.0)
    return float(cos.max())


def _sparsity(relu_out: Tensor) -> float:
    return float((relu_out <= 0).double().mean())


def _head(head: nn.Linear, h: Tensor) -> tuple[float, float | None]:
    w = head.weight.detach().double()
    norms = w.norm(dim=1)
    zero = float((norms <= EPS * norms.max()).double().mean()) if norms.max() > 0 else 1.0
    if head.bias is None:
        return zero, None
    wh = h.double().flatten(1) @ w.T
    term = float((wh.max(dim=1).values - wh.min(dim=1).values).mean())
    b = head.bias.detach().double()
    return zero, float(b.max() - b.min()) / (term + EPS)


def model_check(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    reference_architecture: nn.Module | Mapping[str, Tensor] | None = None,
    thresholds: ModelCheckThresholds | None = None,
    head: str | None = None,
) -> ModelCheck:
    """Run every check on the received ``model`` with the client's batch (``x`` normalised as the model expects,
    ``y`` its training targets); ``model`` is not changed. ``reference_architecture``: the agreed model (or its
    state dict), to compare names and shapes with. ``head``: module path of the classification head, found by
    name as elsewhere in gradleak when not given. See the module docstring for what each check detects."""
    t = thresholds or ModelCheckThresholds()
    if x.dim() < 2 or len(x) != len(y) or len(x) < 2:
        raise InputError(
            f"the model check needs a batch of at least 2 samples with one target each, got inputs "
            f"{tuple(x.shape)} and targets {tuple(y.shape)}"
        )
    checks = []
    if reference_architecture is not None:
        checks.append(architecture_check(model.state_dict(), reference_architecture))
    model = copy.deepcopy(model)  # the forward passes (train-mode BatchNorm) must not touch the client's model
    dsnr, dsnr_at = _dsnr(model, x, y)
    checks.append(Check("dsnr", dsnr, t.dsnr, dsnr_at))
    fw = _forward(model, x)
    if fw.first is None:
        checks += [Check(n, None, getattr(t, n), "no conv/linear layer") for n in ("transmit_snr", "collinear_rows")]
    else:
        name, layer = fw.first
        checks.append(Check("transmit_snr", _transmit_snr(layer), t.transmit_snr, name))
        checks.append(Check("collinear_rows", _collinear(layer), t.collinear_rows, name))
    sparsity = None if fw.relu is None else _sparsity(fw.relu)
    checks.append(Check("relu_sparsity", sparsity, t.relu_sparsity, "no ReLU" if fw.relu is None else "first ReLU"))
    name, module = find_head(model, fw.logits.shape[-1], head)
    zero, bias = _head(module, fw.linear_inputs[module])
    checks.append(Check("head_rows", zero, t.head_rows, name))
    checks.append(Check("head_bias", bias, t.head_bias, name if bias is not None else f"{name} has no bias"))
    return ModelCheck(checks=tuple(checks), batch_size=len(x))
