"""The Cocktail Party Attack (Kariyappa et al. ICML 2023): ICA of the first FC layer's gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.attacks.analytic.cocktail import CocktailParty, scale_by_bias
from gradleak.errors import InputError, UnsupportedError
from gradleak.metrics import score_images
from gradleak.protocols import FedAvg
from gradleak.scenario import Scenario, simulate


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def photos16(seed: int = 1, **kw):
    sc = Scenario(model="mlp", model_kwargs={"width": 256}, dataset="photos", batch_size=16, seed=seed, **kw)
    return simulate(sc)


class NoBiasMLP(nn.Module):
    """flatten → Linear without bias → ReLU → head."""

    head_name = "head"

    def __init__(self, d: int, width: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, width, bias=False), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def matched_correlations(obs, res, truth) -> torch.Tensor:
    """Centred correlation of each true input with the reconstruction paired to it (normalised space)."""
    order = score_images(res.images, truth.images).order
    x = obs.normalization.normalize(res.images[order]).flatten(1).double()
    t = obs.normalization.normalize(truth.images).flatten(1).double()
    x, t = x - x.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return (x * t).sum(1) / (x.norm(dim=1) * t.norm(dim=1))


def test_recovers_a_batch_of_photos_where_unrotated_pca_does_not():
    obs, truth = photos16()
    res = CocktailParty().run(obs, generator=gen())
    assert res.images.shape == truth.images.shape
    assert np.mean(score_images(res.images, truth.images).psnr) >= 22.0
    # the fake: the whitened PCA components without the ICA rotation, scaled the same way
    from sklearn.decomposition import PCA

    g = obs.update["body.1.weight"].double().numpy()
    u = PCA(16).fit(g.T).components_
    x = scale_by_bias(u @ g, np.linalg.pinv(u), obs.update["body.1.bias"].double().numpy())
    fake = obs.normalization.denormalize(torch.from_numpy(x).float().view_as(truth.images)).clamp(0, 1)
    assert np.mean(score_images(fake, truth.images).psnr) < 15.0
    assert len(res.assumptions["kurtosis"]) == 16 and res.assumptions["mixing_condition"] >= 1.0


def test_bias_gradient_fixes_every_separated_sign():
    obs, truth = photos16(seed=0)
    corr = matched_correlations(obs, CocktailParty().run(obs, generator=gen()), truth)
    separated = corr.abs() > 0.9
    assert separated.sum() >= 10
    assert (corr[separated] > 0).all()


def test_range_prior_picks_the_sign_without_a_bias():
    torch.manual_seed(2)
    obs, truth = simulate(Scenario(dataset="photos", batch_size=16, seed=2), model=NoBiasMLP(3 * 32 * 32, 256, 10))
    res = CocktailParty().run(obs, generator=gen())
    assert res.assumptions["scale"].startswith("RMS 1")
    corr = matched_correlations(obs, res, truth)
    separated = corr.abs() > 0.9
    assert separated.sum() >= 10
    assert (corr[separated] > 0).float().mean() >= 0.8


def test_fedavg_delta_is_a_mixture_too():
    obs, truth = photos16(protocol=FedAvg(local_steps=5, local_lr=0.1))
    res = CocktailParty().run(obs, generator=gen())
    assert np.mean(score_images(res.images, truth.images).psnr) >= 22.0


def test_deterministic_and_thread_independent():
    obs, _ = photos16()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = CocktailParty().run(obs, generator=gen()).images
        torch.set_num_threads(2)
        b = CocktailParty().run(obs, generator=gen()).images
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)
    other = CocktailParty().run(obs, generator=torch.Generator().manual_seed(5)).images
    assert not torch.equal(a, other)  # the generator seeds FastICA's start


@pytest.mark.parametrize(
    "scenario, match",
    [
        (Scenario(model="convnet", dataset="photos", batch_size=4), "not a fully connected"),
        (Scenario(model="mlp", dataset="photos", batch_size=4, server_knows_batch_size=False), "batch size is unknown"),
        (Scenario(model="mlp", model_kwargs={"width": 8}, dataset="photos", batch_size=16), "rank is at most"),
        (Scenario(model="mlp", dataset="photos", batch_size=1), "analytic_fc"),
    ],
)
def test_refusals(scenario, match):
    obs, _ = simulate(scenario)
    with pytest.raises(UnsupportedError, match=match):
        ATTACKS.get("cocktail")().check(obs)


def test_config_rejects_unknown_contrast():
    with pytest.raises(InputError, match="fun"):
        CocktailParty(fun="gauss")
