"""Client-side defenses against a malicious or curious server (PAPERS.md §10).

- :mod:`.model_check` — :func:`model_check`: checks the client runs on the model it receives, before training
  (D-SNR and transmit-SNR of Garov et al. ICLR 2024, a sparse first ReLU layer, collinear first-layer rows, zeroed
  head rows and a dominating head bias, the agreed architecture);
- :mod:`.leakage` — :class:`LeakageGuard`: checks the client's outgoing update with the server's fast attacks
  and sends it, sends a defended one or blocks it.

:mod:`gradleak.fl.mods` wraps both as Flower client mods.
"""

from .leakage import FAST_ATTACKS, GuardAttempt, GuardDecision, LeakageGuard, constant_image_psnr, fast_attacks
from .model_check import Check, ModelCheck, ModelCheckThresholds, architecture_check, model_check

__all__ = [
    "FAST_ATTACKS",
    "Check",
    "GuardAttempt",
    "GuardDecision",
    "LeakageGuard",
    "ModelCheck",
    "ModelCheckThresholds",
    "architecture_check",
    "constant_image_psnr",
    "fast_attacks",
    "model_check",
]
