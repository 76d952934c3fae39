"""Generative-prior attacks: GGL's gradient-free latent search (:mod:`.ggl`), its Adam variant
(:mod:`.latent_adam`) and GIFD's feature-domain search (:mod:`.gifd`), sharing the prior loading, defense
estimate and projections of :mod:`.search`. Priors are trained with ``gradleak train-prior``
(:mod:`gradleak.prior`)."""

from .ggl import GGL, GGLConfig
from .gifd import GIFD, GIFDConfig
from .latent_adam import LatentAdam, LatentAdamConfig
from .search import defense_estimate, project_l1_ball, project_sphere

__all__ = [
    "GGL",
    "GGLConfig",
    "GIFD",
    "GIFDConfig",
    "LatentAdam",
    "LatentAdamConfig",
    "defense_estimate",
    "project_l1_ball",
    "project_sphere",
]
