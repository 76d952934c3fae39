"""Defenses the client applies before the server sees its update (one registry, ``DEFENSES``).

- :mod:`.base`: the registry, the :class:`Defense` base classes and the spec parser;
- :mod:`.transforms`: ``Update -> Update`` transforms (clip, noise, laplace, sparsify, quantize);
- :mod:`.compression`: gradient compression (compress);
- :mod:`.dpsgd`: DP-SGD, a training defense, and its ε accounting;
- :mod:`.dpfedavg`: user-level DP-FedAvg (the client clips, the server adds noise to the aggregate);
- :mod:`.bounds`: what the DP defenses guarantee: ε and the bound on any reconstruction attack's success;
- :mod:`.soteria`: Soteria, a batch defense;
- :mod:`.augmentation`: client-side label augmentations (label smoothing, mixup).

Importing this package registers every defense. :func:`gradleak.client.client_round` runs a client's
round with its defenses.
"""

from __future__ import annotations

from .augmentation import LabelSmoothing, Mixup
from .base import DEFENSES, BatchDefense, Defense, TrainingDefense, Update, parse_defense, require_positive
from .bounds import Guarantee, dp_guarantees, reconstruction_bound
from .compression import Compress
from .dpfedavg import DPFedAvg
from .dpsgd import DPSGD, dp_epsilon
from .soteria import Soteria, head_input_and_sensitivity
from .transforms import Clip, GaussianNoise, LaplaceNoise, Quantize, Sparsify

__all__ = [
    "DEFENSES",
    "DPFedAvg",
    "DPSGD",
    "BatchDefense",
    "Clip",
    "Compress",
    "Defense",
    "GaussianNoise",
    "Guarantee",
    "LabelSmoothing",
    "LaplaceNoise",
    "Mixup",
    "Quantize",
    "Soteria",
    "Sparsify",
    "TrainingDefense",
    "Update",
    "dp_epsilon",
    "dp_guarantees",
    "head_input_and_sensitivity",
    "parse_defense",
    "reconstruction_bound",
    "require_positive",
]
