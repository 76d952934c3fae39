"""User-level DP-FedAvg: the client clips its update, the server adds noise once to the mean; its accounting
and its record."""

import importlib.util

import pytest
import torch

from gradleak.client import aggregate_round, client_round
from gradleak.defenses import Clip, DPFedAvg, dp_epsilon, parse_defense
from gradleak.errors import InputError
from gradleak.observation import update_norm
from gradleak.protocols import FedSGD, client_update
from gradleak.scenario import Scenario, simulate

pytestmark = pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="needs 'gradleak[dp]'")
TINY = dict(model="mlp", model_kwargs={"width": 64}, dataset="digits", batch_size=2, seed=3)


def test_specs_and_the_clients_part():
    assert parse_defense("dpfedavg:noise=1.0,clip=2") == DPFedAvg(noise=1.0, clip=2.0)
    assert parse_defense("dpfedavg:0.5,rounds=100,sample_rate=0.01") == DPFedAvg(0.5, rounds=100, sample_rate=0.01)
    for bad in ("dpfedavg:clip=1", "dpfedavg:noise=-1", "dpfedavg:1,sample_rate=0", "dpfedavg:1,rounds=0"):
        with pytest.raises(InputError):
            parse_defense(bad)
    g = torch.Generator().manual_seed(0)
    u = {"a": torch.randn(50, generator=g), "b": torch.randn(5, generator=g)}
    assert update_norm(DPFedAvg(1.0, clip=0.5)(u, generator=g)) == pytest.approx(0.5, rel=1e-5)  # no noise yet


def _clipped_updates(sc):
    """Each client's clipped update, replayed from the ground truth."""
    obs, truth = simulate(sc)
    x = obs.normalization.normalize(truth.images)
    b = sc.batch_size
    return obs, [
        Clip(1.0)(
            client_update(obs.model, FedSGD(), x[c * b : (c + 1) * b], truth.labels[c * b : (c + 1) * b]),
            generator=torch.Generator(),
        )
        for c in range(sc.clients)
    ]


@pytest.mark.parametrize("clients", [1, 4])
def test_noise_is_added_once_to_the_mean(clients):
    """Std noise·clip/N on the mean of N clipped updates (Flower's compute_stdv), not noise on each client's."""
    sc = Scenario(**TINY, clients=clients, defenses=(parse_defense("dpfedavg:noise=0.5,clip=1"),))
    obs, clipped = _clipped_updates(sc)
    residual = torch.cat([(obs.update[k] - torch.stack([u[k] for u in clipped]).mean(0)).flatten() for k in obs.update])
    assert residual.numel() > 60_000 and residual.std().item() == pytest.approx(0.5 / clients, rel=0.02)
    (record,) = obs.defenses
    assert record["clients"] == clients and record["noise_std"] == pytest.approx(0.5 / clients)
    assert record["epsilon"] == pytest.approx(dp_epsilon(0.5, 1.0, 1, 1e-5))


def test_noise_std_is_flowers():
    """Flower's fixed-clipping DP wrappers add std noise_multiplier · clipping_norm / num_sampled_clients."""
    compute_stdv = pytest.importorskip("flwr.supercore.differential_privacy").compute_stdv
    sc = Scenario(**TINY, clients=3, defenses=(parse_defense("dpfedavg:noise=0.7,clip=2"),))
    assert simulate(sc)[0].defenses[0]["noise_std"] == pytest.approx(compute_stdv(0.7, 2.0, 3))


def test_record_accounts_one_round_and_the_rounds_with_sampling():
    sc = Scenario(**TINY, defenses=(parse_defense("dpfedavg:noise=1,rounds=100,sample_rate=0.01"),))
    (record,) = simulate(sc)[0].defenses
    assert record["epsilon"] == pytest.approx(dp_epsilon(1.0, 1.0, 1, 1e-5))
    assert record["epsilon_rounds"] == pytest.approx(dp_epsilon(1.0, 0.01, 100, 1e-5))
    assert record["epsilon_rounds"] < record["epsilon"]  # amplification by sampling outweighs 100 rounds here


def test_aggregate_round_without_dpfedavg_is_the_plain_mean(gen):
    u = {"w": torch.ones(3)}
    same, records = aggregate_round([u], ({"name": "clip", "max_norm": 1.0},), (Clip(1.0),), generator=gen)
    assert same is u and records == ({"name": "clip", "max_norm": 1.0},)
    mean, _ = aggregate_round([u, {"w": 3 * torch.ones(3)}], (), generator=gen)
    assert torch.equal(mean["w"], 2 * torch.ones(3))
    with pytest.raises(InputError):
        aggregate_round([], (), generator=gen)


def test_client_round_alone_only_clips_and_gives_no_guarantee(gen):
    """A client outside a simulated round (e.g. a Flower client) only clips; its record has no noise_std."""
    from gradleak.defenses import dp_guarantees

    obs, truth = simulate(Scenario(**TINY))
    x = obs.normalization.normalize(truth.images)
    update, records = client_round(obs.model, FedSGD(), x, truth.labels, [DPFedAvg(1.0)], generator=gen)
    assert update_norm(update) == pytest.approx(1.0, rel=1e-5) and "noise_std" not in records[0]
    assert dp_guarantees(records) == []


def test_the_flower_demo_refuses_dpfedavg_whose_noise_it_would_not_add():
    pytest.importorskip("opacus")
    from gradleak.fl.task import FlowerTask

    with pytest.raises(InputError, match="DifferentialPrivacyServerSideFixedClipping"):
        FlowerTask(scenario=Scenario(defenses=(DPFedAvg(noise=1.0, clip=1.0),)))
