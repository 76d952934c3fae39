"""User-level DP-FedAvg: each client clips its whole update, the server adds Gaussian noise to the aggregate."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import InputError
from .base import DEFENSES, Defense, Update, require_positive
from .dpsgd import dp_epsilon
from .transforms import Clip

__all__ = ["DPFedAvg"]


@DEFENSES.register("dpfedavg")
@dataclass(frozen=True)
class DPFedAvg(Defense):
    """DP-FedAvg with fixed clipping: the client clips its update to L2 norm ``clip``; the server adds
    N(0, (noise·clip/N)²) to every entry of the mean of the N clients' updates, once.

    McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018
    (arXiv:1710.06963), with uniform client weights — as Flower's ``DifferentialPrivacyClientSideFixedClipping``
    (client clips, server adds noise of std ``noise_multiplier · clipping_norm / num_sampled_clients`` to the
    average). The protected unit is the client: its whole update has sensitivity ``clip`` in the sum, so one round
    is the Gaussian mechanism with noise multiplier ``noise`` however many clients are aggregated.

    Calling the defense is the client's part (the clip); :meth:`at_server` is the server's (noise on the mean), which
    :func:`gradleak.client.aggregate_round` runs. Its record then holds the number of clients, the noise std
    added, ``epsilon`` — the ε at ``delta`` of this one round, with no amplification by client sampling (the server
    knows who took part) — and ``epsilon_rounds``: after ``rounds`` rounds in which each client takes part with
    probability ``sample_rate``, for an observer of the global models who does not know who was sampled
    (McMahan et al.'s accounting). Both from Opacus' RDP accountant.

    Spec: ``dpfedavg:noise=1.0,clip=1.0`` (``dpfedavg:1.0`` sets the noise multiplier), e.g. with
    ``rounds=100,sample_rate=0.01``.
    """

    noise: float
    clip: float = 1.0
    delta: float = 1e-5
    sample_rate: float = 1.0
    rounds: int = 1
    name: ClassVar[str] = "dpfedavg"
    main: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        if importlib.util.find_spec("opacus") is None:  # its ε needs Opacus' accountant
            raise InputError("the dpfedavg defense needs Opacus for its accounting: pip install 'gradleak[dp]'")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise InputError(f"dpfedavg noise multiplier must be >= 0, got {self.noise}")
        require_positive("dpfedavg clip", self.clip)
        if not 0 < self.delta < 1:
            raise InputError(f"dpfedavg delta must be in (0, 1), got {self.delta}")
        if not 0 < self.sample_rate <= 1:
            raise InputError(f"dpfedavg sample_rate must be in (0, 1], got {self.sample_rate}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise InputError(f"dpfedavg rounds must be an integer >= 1, got {self.rounds}")

    def __call__(self, update: Update, *, generator: torch.Generator) -> Update:
        return Clip(self.clip)(update, generator=generator)

    def at_server(self, mean: Update, *, clients: int, generator: torch.Generator) -> tuple[Update, dict[str, Any]]:
        """The server's part: ``mean`` (of ``clients`` clipped updates) plus the noise, and the round's record."""
        std = self.noise * self.clip / clients
        noisy = {k: v + std * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in mean.items()}
        one = dp_epsilon(self.noise, 1.0, 1, self.delta)
        total = dp_epsilon(self.noise, self.sample_rate, self.rounds, self.delta)
        record = {
            **self.to_json(),
            "clients": clients,
            "noise_std": std,
            "epsilon": one if math.isfinite(one) else None,
            "epsilon_rounds": total if math.isfinite(total) else None,
        }
        return noisy, record
