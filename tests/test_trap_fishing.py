"""Malicious servers that change only weights (PAPERS.md §8, §9): trap weights in the first fully connected
layer and their exact recovery; class and feature fishing in the head and the one fished sample's gradient."""

from __future__ import annotations

import json

import pytest
import torch

from gradleak.attacks import FishingRecovery, TrapRecovery
from gradleak.attacks.fishing import fished_gradient
from gradleak.cli import main
from gradleak.data import load_dataset
from gradleak.errors import GradleakError, InputError, UnsupportedError
from gradleak.observation import Observation
from gradleak.protocols import FedSGD, client_update
from gradleak.scenario import Scenario, build_scenario_model, simulate
from gradleak.servers import parse_server
from gradleak.servers.fishing import Fishing, fish_one, fished_count
from gradleak.servers.trap import TrapWeights, fold_normalization, trap_weights


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([update[k].flatten() for k in sorted(update)]).double()


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=0))


def float64_round(model, data, images, labels, record) -> Observation:
    """The FedSGD gradient of ``images`` on ``model`` in float64, as an observation with the server's record."""
    model = model.double()
    update = client_update(model, FedSGD(), data.normalization.normalize(images).double(), labels)
    return Observation(
        model=model,
        update=update,
        num_classes=data.num_classes,
        input_shape=data.image_shape,
        batch_size=len(images),
        normalization=data.normalization,
        server=record,
    )


# -- trap weights ------------------------------------------------------------------------------------
def test_trap_weights_are_half_negative_and_scaled():
    w = trap_weights(3, 10, TrapWeights(scale=0.9).config, gen())
    neg, pos = w.clamp(max=0), w.clamp(min=0)
    assert ((w < 0).sum(1) == 5).all() and ((w > 0).sum(1) == 5).all()
    assert torch.allclose(pos.sum(1), -0.9 * neg.sum(1))


def test_folded_trap_computes_the_pixel_trap_on_normalised_inputs():
    data = load_dataset("photos", size=8)
    w, b = torch.randn(4, 3 * 64, generator=gen()), torch.randn(4, generator=gen(1))
    w2, b2 = fold_normalization(w, b, data.normalization, data.image_shape)
    x = data.images[:5]
    assert torch.allclose(data.normalization.normalize(x).flatten(1) @ w2.T + b2, x.flatten(1) @ w.T + b, atol=1e-4)


def test_trap_recovers_samples_exactly_and_a_random_layer_fewer():
    data = load_dataset("photos", size=16)
    sc = Scenario(model="mlp", model_kwargs={"width": 400}, dataset="photos", image_size=16, seed=0)
    model, _ = build_scenario_model(sc, data.num_classes, data.image_shape)
    images, labels = data.sample(8, generator=gen())
    sent, record = TrapWeights().prepare(
        model, input_shape=data.image_shape, num_classes=10, normalization=data.normalization, generator=gen(1)
    )
    assert record["layer"] == "body.1" and record["normalization_folded"]
    trapped = TrapRecovery().run(float64_round(sent, data, images, labels, record), generator=gen())
    exact = trapped.assumptions["exact"]
    assert sum(exact) >= 5
    for img, flag in zip(trapped.images, exact):
        if flag:  # every sample flagged exact is one of the batch (to the float32 rounding of the images)
            assert (images - img).abs().flatten(1).amax(1).min() < 1e-6
    # the same recovery on the unmodified (randomly initialised) layer: most units fire for most samples
    honest = TrapRecovery().run(float64_round(model, data, images, labels, record), generator=gen())
    assert honest.assumptions["exact_count"] < sum(exact) - 2


def test_trap_refuses_without_its_record_and_a_conv_first_model():
    obs, _ = simulate(Scenario(model="mlp", model_kwargs={"width": 32}, dataset="digits", image_size=8, batch_size=2))
    with pytest.raises(UnsupportedError, match="trap server"):
        TrapRecovery().check(obs)
    problems = TrapWeights().problems(
        build_scenario_model(Scenario(), 10, (3, 32, 32))[0], input_shape=(3, 32, 32), num_classes=10
    )
    assert problems == ["the first layer is a Conv2d (body.conv0), not a fully connected nn.Linear"]
    with pytest.raises(InputError, match="Conv2d"):
        simulate(Scenario(model="convnet", model_kwargs={"width": 4}, dataset="digits", server=TrapWeights()))
    fcn = build_scenario_model(Scenario(model="fcn3"), 10, (1, 8, 8))[0]  # no bias, sigmoid after the first layer
    assert TrapWeights().problems(fcn, input_shape=(1, 8, 8), num_classes=10) == [
        "the first layer body.fc1 has no bias",
        "the first layer body.fc1 is not followed by an nn.ReLU module",
    ]


def test_server_specs_build_the_strategies():
    trap = parse_server("trap:scale=0.9,sigma=0.25")
    fishing = parse_server("fishing:target=3,feature=5,threshold=0.5")
    assert isinstance(trap, TrapWeights) and (trap.config.scale, trap.config.sigma) == (0.9, 0.25)
    assert isinstance(fishing, Fishing) and fishing.config.mode == "feature" and fishing.config.threshold == 0.5


# -- fishing -----------------------------------------------------------------------------------------
def test_class_fishing_isolates_the_one_sample_of_its_class():
    """PAPERS.md §9: a random-init ResNet-18 (16×16 photos), B=64 with one sample of the target class: the
    fished aggregate is that sample's gradient (cosine ≈ 1), where the honest aggregate is not."""
    data = load_dataset("photos", size=16)
    t = 3
    others = torch.nonzero(data.labels != t).flatten()
    index = torch.cat([others[torch.randperm(len(others), generator=gen())[:63]], torch.nonzero(data.labels == t)[0]])
    images, labels = data.images[index], data.labels[index]
    x = data.normalization.normalize(images)
    model, _ = build_scenario_model(Scenario(model="resnet18"), data.num_classes, data.image_shape)
    sent, record = Fishing(target=t).prepare(
        model, input_shape=data.image_shape, num_classes=10, normalization=data.normalization, generator=gen()
    )

    def observe(m, rec):
        update = client_update(m, FedSGD(), x, labels)
        return Observation(
            model=m,
            update=update,
            num_classes=10,
            input_shape=data.image_shape,
            batch_size=64,
            normalization=data.normalization,
            server=rec,
        )

    obs = observe(sent, record)
    assert fished_count(obs) == pytest.approx(1.0, abs=1e-4)
    single_model, single = fished_gradient(obs)
    truth = client_update(single_model, FedSGD(), x[-1:], labels[-1:])
    assert cosine(single, truth) > 0.9999
    honest = observe(model, None).update
    assert cosine(honest, client_update(model, FedSGD(), x[-1:], labels[-1:])) < 0.5


def test_feature_fishing_search_isolates_one_sample_under_secure_aggregation():
    base = dict(
        model="mlp", model_kwargs={"width": 64}, dataset="digits", image_size=8, batch_size=8, clients=3, seed=2
    )
    obs0, truth = simulate(Scenario(**base, server=Fishing(target=0)))
    assert fished_count(obs0) == pytest.approx(float((truth.labels == 0).sum()), abs=1e-4)
    diff, rounds = fish_one(
        lambda s: simulate(Scenario(**base, server=s))[0], target=0, feature=5, centre=0.5, feature_weight=1e4
    )
    assert fished_count(diff) == pytest.approx(1.0, abs=0.01) and len(rounds) == diff.server["rounds"]
    low, high = diff.server["baseline_threshold"], diff.server["threshold"]
    h = diff.model.body(diff.normalization.normalize(truth.images)).detach()[:, 5]
    inside = torch.nonzero((h > low) & (h < high)).flatten()
    assert len(inside) == 1
    single_model, single = fished_gradient(diff)
    i = int(inside[0])  # whatever its class, the difference is its gradient as if of the target class
    x = diff.normalization.normalize(truth.images[i : i + 1])
    assert cosine(single, client_update(single_model, FedSGD(), x, torch.tensor([0]))) > 0.9999


def test_a_fishing_server_with_search_rounds_isolates_one_sample_as_it_observes():
    base = dict(
        model="mlp", model_kwargs={"width": 64}, dataset="digits", image_size=8, batch_size=8, clients=3, seed=2
    )
    obs, truth = simulate(Scenario(**base, server=Fishing(target=0, search_rounds=40, feature_weight=1e4)))
    assert fished_count(obs) == pytest.approx(1.0, abs=0.01)
    record = obs.server
    assert 2 < record["rounds"] <= 40 and record["search_rounds"] == 40 and record["feature"] >= 0
    res = FishingRecovery(tv=0.0).run(obs, generator=gen())
    assert (res.images - truth.images).flatten(1).abs().amax(1).min() < 1e-3  # one of the 24 images, exactly
    with pytest.raises(GradleakError, match="in 3 rounds"):
        simulate(Scenario(**base, server=Fishing(target=0, search_rounds=4, feature_weight=1e4)))
    with pytest.raises(InputError, match="search_rounds"):
        Fishing(search_rounds=1)


def test_cli_audit_searches_over_rounds_and_scores_the_fished_sample(tmp_path):
    out = tmp_path / "out"
    args = ["audit", "--model", "mlp", "--model-kwargs", '{"width": 64}', "--data", "digits", "--image-size", "8"]
    args += ["--batch-size", "8", "--secagg", "3", "--seed", "2", "--attack", "fishing:tv=0", "--out", str(out)]
    server = "fishing:target=0,search_rounds=40,feature_weight=10000"
    assert main(args + ["--server", server, "--quiet"]) == 0
    run = json.loads((out / "results.json").read_text())["attacks"][0]
    assert len(run["originals"]) == 1 and run["psnr"][0] > 60 and run["config"]["tv"] == 0.0
    assert (out / "fishing.png").exists()


def test_fishing_recovery_reconstructs_the_fished_sample():
    sc = Scenario(model="mlp", model_kwargs={"width": 64}, dataset="digits", image_size=8, batch_size=1, seed=0)
    _, truth = simulate(sc)
    obs, _ = simulate(Scenario(**{**sc.__dict__, "server": Fishing(target=int(truth.labels[0]))}))
    res = FishingRecovery(iterations=100, tv=0.0).run(obs, generator=gen())
    assert res.assumptions["fished_count"] == pytest.approx(1.0, abs=1e-4)
    assert (res.images - truth.images).abs().max() < 0.1


def test_fishing_refuses_without_its_record_and_with_several_fished_samples():
    base = dict(model="mlp", model_kwargs={"width": 32}, dataset="digits", image_size=8, batch_size=16, seed=0)
    honest, truth = simulate(Scenario(**base))
    with pytest.raises(UnsupportedError, match="fishing server"):
        FishingRecovery().check(honest)
    t = int(torch.bincount(truth.labels).argmax())
    fished, _ = simulate(Scenario(**base, server=Fishing(target=t)))
    with pytest.raises(UnsupportedError, match="fished samples, not one"):
        FishingRecovery().check(fished)


def test_fishing_refuses_models_it_cannot_modify():
    model = build_scenario_model(Scenario(model="mlp", model_kwargs={"bias": False}), 10, (1, 8, 8))[0]
    assert Fishing(target=12, feature=300).problems(model, input_shape=(1, 8, 8), num_classes=10) == [
        "the head head has no bias: the other classes cannot be silenced",
        "target class 12 does not exist (10 classes)",
        "feature 300 does not exist (the head head has 256 inputs)",
    ]
