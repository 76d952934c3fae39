"""Generative priors for gradient inversion: small generators exposing their feature maps
(:mod:`.models`), their files (:mod:`.io`) and their training on public data (:mod:`.train`, behind
``gradleak train-prior``; import it from there: it needs :mod:`gradleak.data`, which the attacks do not).
Used by the GGL and GIFD attacks (:mod:`gradleak.attacks.generative`)."""

from .io import PRIOR_FORMAT, load_prior, save_prior
from .models import Discriminator, Generator, GeneratorConfig

__all__ = ["PRIOR_FORMAT", "Discriminator", "Generator", "GeneratorConfig", "load_prior", "save_prior"]
