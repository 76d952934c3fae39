"""Generative priors for gradient inversion: small generators exposing their feature maps, trained on
public data (``gradleak train-prior``), used by the GGL and GIFD attacks (:mod:`gradleak.attacks.generative`)."""
from .models import Discriminator, Generator, GeneratorConfig
from .train import PRIOR_FORMAT, TrainConfig, TrainStep, load_prior, save_prior, train_prior

__all__ = ["PRIOR_FORMAT", "Discriminator", "Generator", "GeneratorConfig", "TrainConfig", "TrainStep",
           "load_prior", "save_prior", "train_prior"]
