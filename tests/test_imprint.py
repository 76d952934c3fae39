"""Robbing the Fed (PAPERS.md §7): the imprint server strategy and its recovery, alone and under secure aggregation."""

from __future__ import annotations

import json

import pytest
import torch

from gradleak.attacks import ImprintRecovery
from gradleak.cli import main
from gradleak.data import load_dataset
from gradleak.errors import InputError, UnsupportedError
from gradleak.metrics import score_images
from gradleak.models import build_model
from gradleak.observation import Observation
from gradleak.protocols import FedAvg, FedSGD, client_update
from gradleak.scenario import Scenario, simulate
from gradleak.servers import Imprint, parse_server
from gradleak.servers.imprint import thresholds


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def bin_counts(obs: Observation, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin of each true image, samples per bin) from the block the server sent: bin = units that fire − 1."""
    params = dict(obs.model.named_parameters())
    w, b = (params[obs.server[k]].detach().double() for k in ("weight", "bias"))
    x = obs.normalization.normalize(images.double()).flatten(1)
    bins = ((x @ w.T + b) > 0).sum(1) - 1
    return bins, torch.bincount(bins, minlength=len(b))


def exact_matches(recon: torch.Tensor, truth: torch.Tensor, atol: float) -> torch.Tensor:
    """For each true image, whether some reconstruction equals it within ``atol``."""
    err = (truth.double()[:, None] - recon.double()[None]).flatten(2).abs().amax(2)
    return err.min(1).values < atol


def float64_observation(batch: int, bins: int) -> tuple[Observation, torch.Tensor]:
    data = load_dataset("photos", size=16)
    images, labels = data.sample(batch, generator=gen())
    images = images.double()
    model = build_model("mlp", data.num_classes, data.image_shape, width=64).double()
    sent, record = Imprint(bins=bins).prepare(
        model,
        input_shape=data.image_shape,
        num_classes=data.num_classes,
        normalization=data.normalization,
        generator=gen(),
    )
    update = client_update(sent, FedSGD(), data.normalization.normalize(images), labels)
    obs = Observation(
        model=sent,
        update=update,
        num_classes=data.num_classes,
        input_shape=data.image_shape,
        batch_size=batch,
        normalization=data.normalization,
        server=record,
    )
    return obs, images


def test_singleton_bins_are_exact_in_float64_and_counted():
    obs, images = float64_observation(batch=16, bins=64)
    _, per_bin = bin_counts(obs, images)
    singles = int((per_bin == 1).sum())
    assert 0 < singles < 16  # some samples alone in their bin, some sharing one
    res = ImprintRecovery().run(obs, generator=gen())
    assert res.images.dtype == torch.float64 and res.images.shape == images.shape
    exact = exact_matches(res.images, images, atol=1e-10)  # PSNR > 200 dB
    assert int(exact.sum()) == singles
    a = res.assumptions
    assert a["bins_hit"] == int((per_bin > 0).sum()) and a["padded"] == 16 - a["bins_hit"]
    assert a["singletons_at_least"] == max(0, 2 * a["bins_hit"] - 16) <= singles


def test_lone_samples_are_flagged_consistent():
    obs, images = float64_observation(batch=16, bins=64)
    res = ImprintRecovery().run(obs, generator=gen())
    flags = torch.tensor(res.assumptions["consistent_flags"])
    exact_recon = exact_matches(images, res.images, atol=1e-10)  # per reconstruction: equals some true image
    assert exact_recon.any() and flags[exact_recon].all()
    assert res.assumptions["consistent"] >= int(exact_recon.sum())


def test_secure_aggregation_of_four_clients_through_simulate():
    sc = Scenario(model="mlp", dataset="photos", batch_size=4, clients=4, seed=3, server=Imprint(bins=64))
    obs, truth = simulate(sc)
    assert obs.clients == 4 and obs.batch_size == 16 and obs.server["name"] == "imprint"
    _, per_bin = bin_counts(obs, truth.images)
    singles = int((per_bin == 1).sum())
    assert singles >= 8
    res = ImprintRecovery().run(obs, generator=gen())
    scores = score_images(res.images, truth.images)
    assert sum(p >= 40 for p in scores.psnr) == singles
    assert res.assumptions["clients"] == 4


def test_without_the_record_the_block_is_found_in_the_model():
    obs, images = float64_observation(batch=16, bins=64)
    with_record = ImprintRecovery().run(obs, generator=gen())
    blind = ImprintRecovery().run(Observation(**{**obs.__dict__, "server": None}), generator=gen())
    assert blind.assumptions["block_from"] == "the model" and with_record.assumptions["block_from"] != "the model"
    assert blind.assumptions["layer"] == with_record.assumptions["layer"] == "imprint.bins"
    assert torch.equal(blind.images, with_record.images)
    assert int(exact_matches(blind.images, images, atol=1e-10).sum()) > 0


def test_honest_or_foreign_server_is_refused():
    obs, _ = simulate(Scenario(model="mlp", dataset="digits", image_size=8, batch_size=2, seed=0))
    with pytest.raises(UnsupportedError, match="rows of body.1 are not parallel"):
        ImprintRecovery().check(obs)
    conv, _ = simulate(Scenario(model="lenet", dataset="digits", image_size=8, batch_size=2, seed=0))
    assert any("not a fully connected" in p for p in ImprintRecovery().problems(conv))
    foreign = Observation(**{**obs.__dict__, "server": {"name": "trap-weights"}})
    assert ImprintRecovery().problems(foreign) == ["the server's record is of 'trap-weights', not of an imprint block"]


def test_fedavg_with_local_steps_is_refused():
    sc = Scenario(model="mlp", dataset="digits", image_size=8, batch_size=2, server=Imprint(bins=8), protocol=FedAvg())
    obs, _ = simulate(sc)
    assert any("FedSGD" in p for p in ImprintRecovery().problems(obs))


def test_prepare_inserts_a_block_and_leaves_the_model_alone():
    data = load_dataset("digits", size=8)
    model = build_model("mlp", data.num_classes, data.image_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = parse_server("imprint:bins=16,measurement=avg")
    assert isinstance(strategy, Imprint) and strategy.config.bins == 16
    sent, record = strategy.prepare(
        model,
        input_shape=data.image_shape,
        num_classes=data.num_classes,
        normalization=data.normalization,
        generator=gen(),
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    params = dict(sent.named_parameters())
    assert params[record["weight"]].shape == (16, 64) and record["bins"] == 16
    c = -params[record["bias"]].detach().double()  # gain 1: the thresholds
    assert torch.allclose(c, thresholds(strategy.config), atol=1e-6) and bool((c.diff() > 0).all())
    assert torch.allclose(c[8], torch.zeros((), dtype=torch.float64), atol=1e-6)  # the median of N(0, 1)
    assert sent(data.normalization.normalize(data.images[:3])).shape == (3, data.num_classes)


def test_server_refusals():
    model = build_model("mlp", 10, (1, 8, 8))
    assert Imprint(bins=1).problems(model, input_shape=(1, 8, 8), num_classes=10) == [
        "an imprint block needs at least 2 bins, got 1"
    ]
    assert any("input shape" in p for p in Imprint().problems(model, input_shape=(), num_classes=10))
    with pytest.raises(InputError, match="measurement"):
        parse_server("imprint:measurement=sobel")


def test_list_names_the_attack_and_the_strategy(capsys):
    assert main(["list", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert "imprint" in table["attacks"] and "imprint" in table["server strategies"]


def test_a_named_head_survives_the_imprint_wrapper():
    obs, _ = simulate(
        Scenario(model="mlp", dataset="digits", image_size=8, batch_size=2, head="head", server=Imprint())
    )
    assert obs.head == "model.head" and obs.server["head"] == "model.head"
