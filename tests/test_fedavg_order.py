"""FedAvg batch order: the replay states whether it knows the client's mini-batch order; the order-agnostic
full-batch replay approximates the client's update and says the order is unknown."""

import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.errors import InputError
from gradleak.protocols import FedAvg, FedSGD, client_update, replay_protocol
from gradleak.scenario import Scenario, simulate


def _obs(lr=0.05):
    sc = Scenario(
        model="convnet",
        model_kwargs={"width": 4},
        dataset="digits",
        image_size=16,
        batch_size=4,
        seed=0,
        protocol=FedAvg(local_steps=4, local_lr=lr, local_batch=2),
    )
    return simulate(sc)


def test_replay_protocol():
    fedavg = FedAvg(local_steps=3, local_batch=2)
    assert replay_protocol(fedavg, "known-order") == fedavg
    assert replay_protocol(fedavg, "full-batch") == FedAvg(local_steps=3, local_batch=None)
    assert replay_protocol(FedSGD(), "full-batch") == FedSGD()
    with pytest.raises(InputError):
        replay_protocol(fedavg, "shuffled")


def test_full_batch_replay_approximates_the_clients_update_at_small_rates():
    obs, truth = _obs(lr=1e-3)
    x = obs.normalization.normalize(truth.images)
    full = client_update(obs.model, replay_protocol(obs.protocol, "full-batch"), x, truth.labels)
    rel = sum((full[k] - obs.update[k]).pow(2).sum() for k in full).sqrt()
    rel = float(rel / sum(v.pow(2).sum() for v in obs.update.values()).sqrt())
    assert rel < 0.05, rel  # first order in the rate: the mini-batch steps sum to K full-batch steps
    swapped = client_update(obs.model, obs.protocol, x[[0, 2, 1, 3]], truth.labels[[0, 2, 1, 3]])
    assert any(not torch.allclose(swapped[k], obs.update[k]) for k in swapped)  # the order does matter


@pytest.mark.parametrize(("replay", "order"), [("known-order", "known"), ("full-batch", "unknown")])
def test_attack_records_whether_it_knew_the_batch_order(replay, order):
    obs, truth = _obs()
    res = ATTACKS.get("inverting_gradients")(iterations=2, replay=replay).run(
        obs, generator=torch.Generator().manual_seed(0)
    )
    assert res.assumptions["batch_order"].split(":")[0] == order
    assert res.config["replay"] == replay


def test_fedavg_labels_do_not_need_the_order():
    from gradleak.labels import recover_labels

    obs, _ = _obs()
    assert recover_labels(obs, "fedavg").details["batch_order"].startswith("not needed")
