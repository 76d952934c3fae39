"""DP-SGD: a training defense that replaces the client's local training with differentially private
SGD (per-example clipping and Gaussian noise in every local step), and its privacy accounting."""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..protocols import FedAvg, FedSGD, Protocol, cross_entropy
from .base import DEFENSES, TrainingDefense, Update, require_positive

__all__ = ["DPSGD", "dp_epsilon"]


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
        if importlib.util.find_spec("opacus") is None:  # known before any work, not when the client trains
            raise InputError("the dpsgd defense needs Opacus: pip install 'gradleak[dp]'")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise InputError(f"dpsgd noise multiplier must be >= 0, got {self.noise}")
        require_positive("dpsgd clip", self.clip)
        if not 0 < self.delta < 1:
            raise InputError(f"dpsgd delta must be in (0, 1), got {self.delta}")
        if not 0 < self.sample_rate <= 1:
            raise InputError(f"dpsgd sample_rate must be in (0, 1], got {self.sample_rate}")

    def train(
        self, model: nn.Module, protocol: Protocol, x: Tensor, y: Tensor, *, generator: torch.Generator
    ) -> tuple[Update, dict[str, Any]]:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        net = copy.deepcopy(model).train()  # Opacus trains in train mode; the models it accepts have no BatchNorm
        errors = ModuleValidator.validate(net, strict=False)
        if errors:
            lines = "; ".join(str(e) for e in errors[:5])
            raise InputError(
                f"DP-SGD cannot train this model: {lines}. Use a model without BatchNorm "
                "(e.g. mlp, lenet, or convnet with batchnorm=False)"
            )
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
        opt = DPOptimizer(
            torch.optim.SGD(list(params.values()), lr=lr),
            noise_multiplier=self.noise,
            max_grad_norm=self.clip,
            expected_batch_size=batches[0].stop - batches[0].start,
            loss_reduction="mean",
            generator=generator,
        )
        with warnings.catch_warnings():  # Opacus' hooks warn when the input needs no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for sl in batches:
                opt.expected_batch_size = sl.stop - sl.start
                opt.zero_grad(set_to_none=True)
                cross_entropy(gsm(x[sl]), y[sl]).backward()
                opt.step()
        if isinstance(protocol, FedSGD):
            update = {k: cast(Tensor, params[k].grad).detach().clone() for k in params}  # step() set every .grad
        else:
            update = {k: params[k].detach() - theta0[k] for k in params}
        gsm._close()
        steps = len(batches)
        eps = dp_epsilon(self.noise, self.sample_rate, steps, self.delta)
        record = {**self.to_json(), "steps": steps, "epsilon": eps if math.isfinite(eps) else None}
        return update, record
