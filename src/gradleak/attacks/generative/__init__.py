"""Generative-prior attacks: GGL's latent search (:mod:`.ggl`) and GIFD's feature-domain search
(:mod:`.gifd`), sharing the prior loading, defense estimate and projections of :mod:`.search`.
Priors are trained with ``gradleak train-prior`` (:mod:`gradleak.prior`)."""

from .ggl import GGL, GGLConfig
from .gifd import GIFD, GIFDConfig
from .search import defense_estimate, project_l1_ball, project_sphere

__all__ = ["GGL", "GGLConfig", "GIFD", "GIFDConfig", "defense_estimate", "project_l1_ball", "project_sphere"]
