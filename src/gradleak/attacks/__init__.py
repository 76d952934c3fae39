"""Attacks: one module per paper, one registry (``ATTACKS``), one shared matching engine.

Every module of this package is imported on first use so its ``@attack`` registrations run.
"""

from __future__ import annotations

import sys

from ..plugins import import_submodules
from .base import ATTACKS, Attack, AttackResult, attack
from .steps import Step

import_submodules(sys.modules[__name__])

from .analytic.cocktail import CocktailParty  # noqa: E402  (the registrations above import every attack module once)
from .analytic.cocktail_spear import CocktailSPEAR  # noqa: E402
from .analytic.fc import FCExact  # noqa: E402
from .analytic.imprint import ImprintRecovery  # noqa: E402
from .analytic.layerwise import RGAP  # noqa: E402
from .analytic.spear import SPEAR  # noqa: E402
from .analytic.tensor import TensorAttack  # noqa: E402
from .analytic.trap import TrapRecovery  # noqa: E402
from .dlg import DLG  # noqa: E402
from .fishing import FishingRecovery  # noqa: E402
from .generative.ggl import GGL  # noqa: E402
from .generative.gifd import GIFD  # noqa: E402
from .generative.latent_adam import LatentAdam  # noqa: E402
from .gradinversion import GradInversion  # noqa: E402
from .inverting_gradients import (  # noqa: E402
    InvertingGradients,
    InvertingGradientsBatchTV,
    InvertingGradientsRelativeTV,
    InvertingGradientsRelativeTVPlateau,
)

__all__ = [
    "ATTACKS",
    "CocktailParty",
    "CocktailSPEAR",
    "DLG",
    "GGL",
    "GIFD",
    "RGAP",
    "SPEAR",
    "Attack",
    "AttackResult",
    "FCExact",
    "FishingRecovery",
    "GradInversion",
    "ImprintRecovery",
    "InvertingGradients",
    "InvertingGradientsBatchTV",
    "InvertingGradientsRelativeTV",
    "InvertingGradientsRelativeTVPlateau",
    "LatentAdam",
    "Step",
    "TensorAttack",
    "TrapRecovery",
    "attack",
]
