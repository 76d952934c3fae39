"""ICA-seeded SPEAR (cocktail-spear): exact batches from ICA estimates, SPEAR's evidence, its fallback and refusals."""

import pytest
import torch

from gradleak.attacks import ATTACKS, CocktailParty
from gradleak.attacks.analytic.cocktail_spear import CocktailSPEAR
from gradleak.errors import InputError, UnsupportedError
from gradleak.metrics import score_images
from gradleak.protocols import FedAvg
from gradleak.scenario import Scenario, simulate


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def photos(b: int, seed: int, **kw):
    return simulate(Scenario(model="mlp", model_kwargs={"width": 256}, dataset="photos", batch_size=b, seed=seed, **kw))


@pytest.mark.parametrize("b, seed, fedavg", [(16, 1, False), (24, 2, False), (16, 1, True)])
def test_recovers_every_sample_exactly_where_ica_alone_does_not(b, seed, fedavg):
    obs, truth = photos(b, seed, **({"protocol": FedAvg(local_steps=3, local_lr=0.1)} if fedavg else {}))
    res = CocktailSPEAR().run(obs, generator=gen())
    scores = score_images(res.images, truth.images)
    assert min(scores.psnr) >= 60 and res.assumptions["exact"] == [True] * b
    if not fedavg:  # ICA's estimates alone are far from exact on these batches
        ica = score_images(CocktailParty().run(obs, generator=gen()).images, truth.images)
        assert min(ica.psnr) < 25
        assert res.assumptions["gradient_residual"] < 1e-4


def test_the_remainder_passes_find_what_the_first_estimates_miss():
    obs, truth = photos(24, 2)
    full = CocktailSPEAR().run(obs, generator=gen())
    first = full.assumptions["directions_per_pass"][0]
    assert first < 24 and sum(full.assumptions["directions_per_pass"]) == 24
    # without the passes on the remainder, fewer than B directions: the ICA estimates, flagged not exact
    cut = CocktailSPEAR(max_passes=0).run(obs, generator=gen())
    assert cut.assumptions["directions_found"] == first and cut.assumptions["exact"] == [False] * 24
    assert torch.equal(cut.images, CocktailParty().run(obs, generator=gen()).images)


def test_refusals_are_spears():
    digits = {"dataset": "digits", "image_size": 8, "seed": 0}
    no_bias = simulate(Scenario(model="fcn3", model_kwargs={"activation": "relu"}, batch_size=2, **digits))[0]
    leaky = simulate(Scenario(model="fcn3", model_kwargs={"bias": True}, batch_size=2, **digits))[0]
    one = simulate(Scenario(model="mlp", batch_size=1, **digits))[0]
    for obs, match in ((no_bias, "no bias"), (leaky, "not a ReLU"), (one, "one sample needs no separation")):
        with pytest.raises(UnsupportedError, match=match):
            ATTACKS.get("cocktail-spear")().check(obs)
    with pytest.raises(InputError, match="scales must be positive"):
        CocktailSPEAR(scales=(1.0, -1.0))
