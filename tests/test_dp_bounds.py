"""The reconstruction bound of DP defenses (Hayes et al. NeurIPS 2023): closed forms, the numerical composition,
and real attacks under DP noise that never beat it; candidate identification, the success it bounds."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.defenses import Clip, dp_guarantees, parse_defense, reconstruction_bound
from gradleak.defenses.bounds import gaussian_reconstruction_bound, subsampled_gaussian_bound
from gradleak.errors import InputError
from gradleak.metrics import candidate_success, draw_decoys
from gradleak.protocols import client_update
from gradleak.scenario import Scenario, simulate

needs_opacus = pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="needs 'gradleak[dp]'")


def test_gaussian_bound_known_values_and_limits():
    assert reconstruction_bound(0.1, 1.0) == pytest.approx(0.3891437, abs=1e-6)  # Φ(Φ⁻¹(0.1) + 1) = Φ(−0.28155)
    assert reconstruction_bound(0.5, 1.0) == pytest.approx(0.8413447, abs=1e-6)  # Φ(1)
    assert reconstruction_bound(0.01, 2.0, steps=4) == pytest.approx(gaussian_reconstruction_bound(0.01, 1.0))
    assert reconstruction_bound(0.1, 1e6) == pytest.approx(0.1, abs=1e-6)  # no information: the prior
    assert reconstruction_bound(0.1, 1e-3) == pytest.approx(1.0) and reconstruction_bound(0.1, 0.0) == 1.0
    sigmas = [0.2, 0.5, 1.0, 2.0, 5.0]
    by_sigma = [reconstruction_bound(0.1, s) for s in sigmas]
    assert all(a > b for a, b in zip(by_sigma, by_sigma[1:]))
    assert all(b > 0.1 for b in by_sigma)  # always above the prior
    assert reconstruction_bound(0.01, 1.0) < reconstruction_bound(0.1, 1.0)
    assert reconstruction_bound(0.1, 1.0, steps=2) > reconstruction_bound(0.1, 1.0)
    one = reconstruction_bound(0.1, 1.0, sample_rate=0.2)
    assert one == pytest.approx(0.8 * 0.1 + 0.2 * 0.3891437, abs=1e-6) and one < reconstruction_bound(0.1, 1.0)
    for bad in (dict(kappa=0.0, noise=1.0), dict(kappa=0.1, noise=-1.0)):
        with pytest.raises(InputError):
            reconstruction_bound(**bad)


@pytest.mark.parametrize(
    ("kappa", "noise", "q", "steps"), [(0.1, 1.0, 0.3, 1), (0.1, 1.0, 1.0, 4), (0.001, 2.0, 1.0, 9)]
)
def test_numerical_composition_brackets_the_closed_forms(kappa, noise, q, steps):
    lower, upper = subsampled_gaussian_bound(kappa, noise, sample_rate=q, steps=steps)
    exact = (
        reconstruction_bound(kappa, noise, steps=steps) if q == 1 else reconstruction_bound(kappa, noise, sample_rate=q)
    )
    assert lower <= exact <= upper and upper - lower < 2e-3 * exact


def test_numerical_composition_matches_monte_carlo():
    """The most powerful test between P = N(0, 1)^T and Q = ((1 − q) N(0, 1) + q N(1/σ, 1))^T, by sampling."""
    kappa, noise, q, steps = 0.1, 0.8, 0.3, 3
    lower, upper = subsampled_gaussian_bound(kappa, noise, sample_rate=q, steps=steps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400_000, steps))
    loss = np.log(1 - q + q * np.exp(x / noise - 1 / (2 * noise**2))).sum(1)  # log dQ/dP under P
    t = np.quantile(loss, 1 - kappa)
    estimate = float(np.mean(np.exp(loss) * (loss > t)))  # Q(loss > t) = E_P[e^loss; loss > t]
    assert lower <= upper and abs(estimate - (lower + upper) / 2) < 0.01
    assert upper < reconstruction_bound(kappa, noise, steps=steps)  # subsampling helps


def test_candidate_success_and_decoys():
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(30, 1, 4, 4, generator=g)
    truth = pool[:2].clone()
    index = draw_decoys(pool, truth, 5, generator=g)
    assert index.shape == (2, 5) and set(index.flatten().tolist()) <= set(range(2, 30))  # never a client image
    assert len(set(index[0].tolist())) == 5
    decoys = pool[index]
    assert candidate_success(truth.flip(0), truth, decoys) == [True, True]  # any reconstruction may match
    assert candidate_success(decoys[:, 0], truth, decoys) == [False, False]
    with pytest.raises(InputError):
        draw_decoys(pool[:3], truth, 5, generator=g)
    with pytest.raises(InputError):
        candidate_success(truth, truth, decoys[0])


def _prior_aware_guess(obs, candidates, labels, clip):
    """Hayes et al.'s prior-aware adversary for one Gaussian release: the candidate whose clipped update is nearest
    the observed one (the most likely, since clipped updates share one norm and the noise is isotropic)."""
    x = obs.normalization.normalize(candidates)
    dist = []
    for i in range(len(candidates)):
        update = client_update(obs.model, obs.protocol, x[i : i + 1], labels[i : i + 1])
        u = Clip(clip)(update, generator=torch.Generator())
        dist.append(sum(float((obs.update[k] - u[k]).pow(2).sum()) for k in u))
    return int(np.argmin(dist))


@needs_opacus
@pytest.mark.parametrize("spec", ["dpfedavg:noise=0.5,clip=1", "dpsgd:noise=0.5,clip=1"])
def test_attacks_under_dp_noise_never_beat_the_bound(spec):
    """B=1 under DP noise σ = 0.5, κ = 1/10: the analytic attack's reconstruction (nearest candidate) and the
    prior-aware adversary, over 40 seeded rounds, succeed no more often than the bound (0.764)."""
    from gradleak.data import load_dataset

    data = load_dataset("digits", size=8)
    k, trials = 10, 40
    fc = prior = 0
    for seed in range(trials):
        defense = parse_defense(spec)
        sc = Scenario(
            model="mlp", model_kwargs={"width": 64}, dataset="digits", image_size=8, seed=seed, defenses=(defense,)
        )
        obs, truth = simulate(sc, dataset=data)
        index = draw_decoys(data.images, truth.images, k - 1, generator=torch.Generator().manual_seed(seed))
        decoys = data.images[index]
        res = ATTACKS.get("analytic_fc")().run(obs, generator=torch.Generator().manual_seed(0))
        fc += candidate_success(res.images, truth.images, decoys)[0]
        pick = torch.randperm(k, generator=torch.Generator().manual_seed(seed))  # candidate order hides the truth
        cands = torch.cat([truth.images, decoys[0]])[pick]
        labels = torch.cat([truth.labels, data.labels[index[0]]])[pick]
        prior += int(pick[_prior_aware_guess(obs, cands, labels, 1.0)] == 0)
    (guarantee,) = dp_guarantees(obs.defenses)
    bound = guarantee.bound(1 / k)
    assert bound == pytest.approx(reconstruction_bound(0.1, 0.5)) and bound == pytest.approx(0.7638, abs=1e-4)
    assert fc / trials <= bound and prior / trials <= bound
    assert prior / trials > 0.4  # the prior-aware adversary is far above chance: the bound is not vacuous here


@needs_opacus
def test_guarantees_from_records():
    records = (
        {"name": "dpsgd", "noise": 2.0, "clip": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 3, "epsilon": 1.0},
        {"name": "dpfedavg", "noise": 1.0, "clip": 1.0, "delta": 1e-5, "sample_rate": 0.5, "rounds": 10},
        {"name": "noise", "sigma": 0.1},
    )
    (g,) = dp_guarantees(records)  # the dpfedavg record had no noise added at aggregation: no guarantee
    assert (g.unit, g.steps, g.sample_rate) == ("example", 3, 0.1)
    assert g.bound(0.1) == pytest.approx(reconstruction_bound(0.1, 2.0, sample_rate=0.1, steps=3))
    fed = dict(records[1], clients=4, noise_std=0.25)
    (f,) = dp_guarantees([fed])
    assert (f.unit, f.steps, f.sample_rate) == ("client", 1, 1.0) and math.isclose(
        f.bound(0.1), 0.3891437, abs_tol=1e-6
    )
    with pytest.raises(InputError):
        dp_guarantees([dict(records[0], noise="a lot")])
