"""Defenses that run inside the client, plus gradient compression.

Two kinds of defense need more than the update itself, so they are not plain ``Update -> Update``
transforms (:class:`~gradleak.defenses.Defense`):

- a :class:`TrainingDefense` *replaces* the client's local training — DP-SGD clips every example's
  gradient and adds noise inside each local step, so it cannot be applied to a finished update;
- a :class:`BatchDefense` transforms the finished update but needs the client's model and batch —
  Soteria measures how the defended layer's input depends on the images.

Both are still named in ``--defense`` specs like any other defense (``dpsgd:noise=1.0,clip=1.0``,
``soteria:0.8``) and recorded in the Observation. :func:`client_round` is the one place that runs a
client's round with its defenses: the scenario simulator, the Flower clients and the sweep all call
it. A training defense always runs first (it produces the update); the others follow in order.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .defenses import DEFENSES, Defense, Update, _positive
from .errors import InputError
from .protocols import FedAvg, FedSGD, Protocol, client_update, cross_entropy

__all__ = ["BatchDefense", "Compress", "DPSGD", "Soteria", "TrainingDefense", "client_round", "dp_epsilon"]


class TrainingDefense(Defense):
    """A defense that changes how the client trains; it produces the update instead of transforming it."""

    def train(self, model: nn.Module, protocol: Protocol, x: Tensor, y: Tensor, *,
              generator: torch.Generator) -> tuple[Update, dict[str, Any]]:
        """The client's defended update for batch ``(x, y)`` and the record to store (e.g. ε spent)."""
        raise NotImplementedError

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise InputError(f"{self.name} changes the client's training and cannot transform a finished update; "
                         "run the round through gradleak.defenses_extra.client_round")


class BatchDefense(Defense):
    """A transform of the finished update that also reads the client's model and batch."""

    def transform(self, update: Update, *, model: nn.Module, x: Tensor, y: Tensor,
                  generator: torch.Generator) -> Update:
        raise NotImplementedError

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        raise InputError(f"{self.name} needs the client's model and batch; "
                         "run the round through gradleak.defenses_extra.client_round")


def client_round(model: nn.Module, protocol: Protocol, x: Tensor, y: Tensor, defenses: Sequence[Defense] = (),
                 *, generator: torch.Generator) -> tuple[Update, tuple[dict[str, Any], ...]]:
    """One client round with its defenses: ``(update the server sees, defense records in order)``.

    ``x`` is the normalised batch and ``y`` the training targets (int64 labels or soft targets).
    ``model`` is not changed.
    """
    training = [d for d in defenses if isinstance(d, TrainingDefense)]
    if len(training) > 1:
        raise InputError(f"at most one training defense per client, got {[d.name for d in training]}")
    records: list[dict[str, Any]] = []
    if training:
        update, record = training[0].train(model, protocol, x, y, generator=generator)
        records.append(record)
    else:
        update = client_update(model, protocol, x, y)
    for d in defenses:
        if isinstance(d, TrainingDefense):
            continue
        if isinstance(d, BatchDefense):
            update = d.transform(update, model=model, x=x, y=y, generator=generator)
        else:
            update = d(update, generator=generator)
        records.append(d.to_json())
    return update, tuple(records)


# -- DP-SGD ----------------------------------------------------------------------------------------

def dp_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` DP-SGD steps (Gaussian noise multiplier ``noise``, sampling rate ``sample_rate``)
    at ``delta``, from Opacus's RDP accountant; ``inf`` without noise."""
    if noise <= 0 or steps <= 0:
        return math.inf if steps > 0 else 0.0
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(noise), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta))


@DEFENSES.register("dpsgd")
@dataclass(frozen=True)
class DPSGD(TrainingDefense):
    """DP-SGD via Opacus: per-example clipping to ``clip`` + Gaussian noise ``noise``·``clip`` per step.

    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv:1607.00133; implemented
    with Opacus (Yousefpour et al. 2021, arXiv:2109.12298). Every local step (one for FedSGD, the
    protocol's ``local_steps`` for FedAvg) computes per-example gradients, clips each to L2 norm
    ``clip``, sums them, adds N(0, (noise·clip)²) and divides by the step's batch size. The record
    holds the ε spent in this round at ``delta``, for ``sample_rate`` the probability that one of the
    client's examples is in a step's batch (1.0, the default, when the batch is all the client's data:
    no amplification by subsampling — a valid upper bound for any batching).

    Spec: ``dpsgd:noise=1.0,clip=1.0`` (``dpsgd:1.0`` sets the noise multiplier). Example::

        update, records = client_round(model, FedSGD(), x, y, [DPSGD(noise=1.0)], generator=g)
        records[0]["epsilon"]
    """

    noise: float
    clip: float = 1.0
    delta: float = 1e-5
    sample_rate: float = 1.0
    name: ClassVar[str] = "dpsgd"
    main: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise InputError(f"dpsgd noise multiplier must be >= 0, got {self.noise}")
        _positive("dpsgd clip", self.clip)
        if not 0 < self.delta < 1:
            raise InputError(f"dpsgd delta must be in (0, 1), got {self.delta}")
        if not 0 < self.sample_rate <= 1:
            raise InputError(f"dpsgd sample_rate must be in (0, 1], got {self.sample_rate}")

    def train(self, model: nn.Module, protocol: Protocol, x: Tensor, y: Tensor, *,
              generator: torch.Generator) -> tuple[Update, dict[str, Any]]:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        net = copy.deepcopy(model)
        errors = ModuleValidator.validate(net, strict=False)
        if errors:
            lines = "; ".join(str(e) for e in errors[:5])
            raise InputError(f"DP-SGD cannot train this model: {lines}. Use a model without BatchNorm "
                             "(e.g. mlp, lenet, or convnet with batchnorm=False)")
        n = x.shape[0]
        if isinstance(protocol, FedSGD):
            lr, batches = 1.0, [slice(0, n)]
        elif isinstance(protocol, FedAvg):
            lr, batches = protocol.local_lr, protocol.batches(n)
        else:  # pragma: no cover - Protocol is a closed union
            raise InputError(f"DP-SGD does not know protocol {protocol!r}")
        params = {k: p for k, p in net.named_parameters() if p.requires_grad}
        theta0 = {k: p.detach().clone() for k, p in params.items()}
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(torch.optim.SGD(list(params.values()), lr=lr), noise_multiplier=self.noise,
                          max_grad_norm=self.clip, expected_batch_size=batches[0].stop - batches[0].start,
                          loss_reduction="mean", generator=generator)
        with warnings.catch_warnings():  # Opacus' hooks warn when the input needs no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for sl in batches:
                opt.expected_batch_size = sl.stop - sl.start
                opt.zero_grad(set_to_none=True)
                cross_entropy(gsm(x[sl]), y[sl]).backward()
                opt.step()
        if isinstance(protocol, FedSGD):
            update = {k: params[k].grad.detach().clone() for k in params}
        else:
            update = {k: params[k].detach() - theta0[k] for k in params}
        gsm._close()
        steps = len(batches)
        eps = dp_epsilon(self.noise, self.sample_rate, steps, self.delta)
        record = {**self.to_json(), "steps": steps, "epsilon": eps if math.isfinite(eps) else None}
        return update, record


# -- Soteria ---------------------------------------------------------------------------------------

def head_input_and_sensitivity(model: nn.Module, layer: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The defended layer's input ``r`` [B, M] and ``‖∂r_bf/∂x_b‖`` [B, M] (one batched VJP per feature)."""
    net = copy.deepcopy(model)
    module = dict(net.named_modules())[layer]
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    xi = x.detach().clone().requires_grad_(True)
    try:
        net(xi)
    finally:
        handle.remove()
    r = captured[0].flatten(1)                                     # [B, M]
    m = r.shape[1]
    eye = torch.eye(m, dtype=r.dtype).unsqueeze(1).expand(m, r.shape[0], m)   # [M, B, M]
    (jac,) = torch.autograd.grad(r, xi, grad_outputs=eye, is_grads_batched=True)  # [M, B, ...]
    sens = jac.flatten(2).norm(dim=2).T                             # [B, M]
    return r.detach(), sens.detach()


@DEFENSES.register("soteria")
@dataclass(frozen=True)
class Soteria(BatchDefense):
    """Soteria: prune the defended layer's gradient where the representation is most input-revealing.

    Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning from
    Representation Perspective", CVPR 2021, arXiv:2012.06043. For every input feature ``f`` of the
    defended fully connected layer (the classification head, found by name), the client computes
    ``s_f = Σ_b ‖∂r_bf/∂x_b‖ / |r_bf|`` — the inverse of the input perturbation norm ``|r_f| / ‖∇_x r_f‖``
    that removes feature ``f`` (the paper's ratio of feature-perturbation norms) — and zeroes the
    gradient columns of the ``ratio`` fraction of features with the smallest ``s_f`` (largest
    perturbation). Other layers' updates pass unchanged: attacks that use them are not stopped (the
    paper's guarantee covers the defended layer only). Spec: ``soteria:0.8``.
    """

    ratio: float
    name: ClassVar[str] = "soteria"
    main: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise InputError(f"soteria ratio is the fraction of features pruned, in [0, 1); got {self.ratio}")

    def mask(self, model: nn.Module, x: Tensor) -> tuple[str, Tensor]:
        """The defended layer's name and the keep-mask over its input features (bool [M])."""
        from .models import find_head

        name, _ = find_head(model)
        r, sens = head_input_and_sensitivity(model, name, x)
        with torch.no_grad():
            score = (sens / r.abs()).nan_to_num(nan=math.inf, posinf=math.inf).sum(0)   # dead features: inf
        k = int(math.floor(self.ratio * score.numel()))
        keep = torch.ones(score.numel(), dtype=torch.bool)
        if k:
            keep[score.argsort()[:k]] = False
        return name, keep

    def transform(self, update: Update, *, model: nn.Module, x: Tensor, y: Tensor,
                  generator: torch.Generator) -> Update:
        name, keep = self.mask(model, x)
        out = dict(update)
        w = f"{name}.weight"
        if out[w].shape[1] != keep.numel():
            raise InputError(f"soteria: layer {name!r} takes {out[w].shape[1]} inputs but its input had "
                             f"{keep.numel()} features")
        out[w] = out[w] * keep.to(out[w].dtype)
        return out


# -- gradient compression --------------------------------------------------------------------------

@DEFENSES.register("compress")
@dataclass(frozen=True)
class Compress(Defense):
    """Gradient compression: global top-k sparsification, then stochastic ``bits``-bit quantization.

    As in Deep Gradient Compression (Lin et al., ICLR 2018, arXiv:1712.01887) the ``ratio`` fraction
    of entries with the smallest magnitude is dropped over the *whole* update (one threshold for all
    layers, unlike ``sparsify``'s per-tensor one); the kept values are then quantized without bias
    to ``bits`` bits per magnitude on each tensor's [0, max|v|] (QSGD-style stochastic rounding, Alistarh et al. NeurIPS 2017,
    arXiv:1610.02132; sign kept, ``bits=0``: no quantization). DGC's momentum correction and
    error-feedback accumulation carry state across rounds and change nothing in one round; they are
    not modelled. Spec: ``compress:0.99`` or ``compress:ratio=0.9,bits=4``.
    """

    ratio: float
    bits: int = 0
    name: ClassVar[str] = "compress"
    main: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise InputError(f"compress ratio is the fraction of entries dropped, in [0, 1); got {self.ratio}")
        if not (isinstance(self.bits, int) and 0 <= self.bits <= 16):
            raise InputError(f"compress bits must be an integer in 0..16 (0: no quantization), got {self.bits}")

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        flat = torch.cat([v.flatten() for v in update.values()])
        keep = max(1, int(round(flat.numel() * (1 - self.ratio))))
        thresh = flat.abs().topk(keep).values[-1]
        out = {}
        for k, v in update.items():
            kept = v * (v.abs() >= thresh).to(v.dtype)
            top = kept.abs().max() if kept.numel() else kept.new_zeros(())
            if self.bits and top > 0:
                levels = 2 ** self.bits - 1
                scaled = kept.abs() / top * levels
                low = scaled.floor()
                up = torch.rand(v.shape, generator=generator, dtype=v.dtype) < (scaled - low)
                kept = torch.sign(kept) * (low + up.to(v.dtype)) * top / levels
            out[k] = kept
        return out
