"""The threat model in the scenario and the Observation: secure aggregation of N clients, a server's record."""

import json
from dataclasses import replace

import pytest
import torch

from gradleak.attacks.matching import MatchingConfig, MatchingProblem
from gradleak.cli import main
from gradleak.errors import InputError, UnknownNameError
from gradleak.labels import LABEL_METHODS
from gradleak.observation import Observation
from gradleak.protocols import FedAvg, FedSGD, client_update
from gradleak.scenario import Scenario, simulate
from gradleak.servers import Imprint, parse_server
from gradleak.servers.fishing import Fishing

TINY = dict(model="mlp", dataset="digits", image_size=8, batch_size=3, seed=5)


def test_secagg_update_is_the_mean_of_each_clients_update():
    obs, truth = simulate(Scenario(**TINY, clients=4))
    assert obs.clients == 4 and obs.batch_size == 12 and obs.client_batch_sizes == (3, 3, 3, 3)
    assert truth.images.shape[0] == 12 and len(set(map(tuple, truth.images.flatten(1).tolist()))) == 12
    x = obs.normalization.normalize(truth.images)
    parts = [slice(c * 3, (c + 1) * 3) for c in range(4)]
    per_client = [client_update(obs.model, obs.protocol, x[s], truth.targets[s]) for s in parts]
    for k, v in obs.update.items():
        assert torch.allclose(v, torch.stack([u[k] for u in per_client]).mean(0), atol=1e-6), k
        assert not torch.allclose(v, per_client[0][k], atol=1e-6), k


def test_one_client_is_unchanged_by_the_threat_fields():
    obs, truth = simulate(Scenario(**TINY))
    assert obs.clients == 1 and obs.client_batch_sizes is None and obs.server is None
    assert truth.images.shape[0] == 3


def test_threat_fields_survive_a_file(tmp_path):
    obs, _ = simulate(Scenario(**TINY, clients=2))
    obs = Observation(**{**obs.__dict__, "server": {"name": "example", "bins": 4}})
    back = Observation.load(obs.save(tmp_path / "o.safetensors"), model=obs.model)
    assert (back.clients, back.client_batch_sizes, back.server) == (2, (3, 3), {"name": "example", "bins": 4})


def test_a_weights_only_server_keeps_the_zoo_model_in_files(tmp_path):
    obs, _ = simulate(Scenario(**TINY, server=Fishing(target=1)))
    assert obs.model_spec is not None and obs.model_spec.name == "mlp"
    back = Observation.load(obs.save(tmp_path / "fishing.safetensors"))  # no model needed: the zoo one
    assert back.server == obs.server and torch.equal(back.update["head.bias"], obs.update["head.bias"])
    imprinted, _ = simulate(Scenario(**TINY, server=Imprint(bins=4)))
    assert imprinted.model_spec is None
    with pytest.raises(InputError, match="a model the server changed \\('imprint' adds layers"):
        Observation.load(imprinted.save(tmp_path / "imprint.safetensors"))
    again = Observation.load(tmp_path / "imprint.safetensors", model=imprinted.model)
    assert again.server == imprinted.server


def test_client_batch_sizes_must_fit_the_aggregate():
    obs, _ = simulate(Scenario(**TINY, clients=2))
    with pytest.raises(InputError) as e:
        Observation(**{**obs.__dict__, "client_batch_sizes": (3, 2)})
    assert "sum to 5, not batch_size 6" in str(e.value.problems)
    with pytest.raises(InputError) as e:
        Observation(**{**obs.__dict__, "client_batch_sizes": (2, 2, 2)})
    assert "3 client batch sizes given for an aggregate of 2" in str(e.value.problems)


def test_server_specs():
    assert parse_server("honest") is None
    with pytest.raises(UnknownNameError):
        parse_server("no-such-server")
    with pytest.raises(InputError):
        parse_server("honest:bins=3")
    with pytest.raises(InputError):
        Scenario(clients=0)


def test_cli_secagg_audit_reports_the_threat(tmp_path):
    out = tmp_path / "out"
    args = ["audit", "--model", "mlp", "--data", "digits", "--image-size", "8", "--batch-size", "2", "--secagg", "3"]
    assert main(args + ["--attack", "analytic_fc", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["threat"] == {"server": "honest", "clients": 3, "client_batch_sizes": [2, 2, 2]}
    assert "secure aggregation: the mean of 3 clients" in (out / "report.html").read_text()


@pytest.mark.parametrize("protocol", [FedSGD(), FedAvg(local_steps=2, local_lr=0.1)])
def test_matching_replays_each_client_of_an_aggregate(protocol):
    """With BN in train mode and FedAvg, the mean of per-client updates differs from one big batch's update; the
    matching engine replays each client's part, so the true images match the aggregate exactly."""
    obs, truth = simulate(
        Scenario(
            model="convnet",
            model_kwargs={"width": 4},
            dataset="digits",
            image_size=16,
            batch_size=2,
            clients=3,
            bn_mode="train",
            protocol=protocol,
            seed=1,
        )
    )
    x = obs.normalization.normalize(truth.images)
    problem = MatchingProblem(obs, truth.labels, MatchingConfig(distance="l2", tv=0.0, bn=0.0))
    _, match = problem.objective(x, autograd=True)
    single = MatchingProblem(replace(obs, clients=1, client_batch_sizes=None), truth.labels, problem.cfg)
    _, match_single = single.objective(x, autograd=True)
    assert float(match) < 1e-10 < float(match_single)


def test_fedavg_label_replay_refuses_an_aggregate():
    obs, _ = simulate(Scenario(**TINY, clients=2, protocol=FedAvg(local_steps=2, local_lr=0.1)))
    assert "mean of 2 clients' FedAvg deltas" in " ".join(LABEL_METHODS.get("fedavg")().problems(obs))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("imprint:bins=1", "cannot modify this model"),
        ("imprint:bins=x", "bins='x' is not of type int"),
        ("no-such-server", "unknown server strategy"),
        ("imprint:foo=2", "expected KEY=VALUE"),
    ],
)
def test_bad_server_specs_exit_2_and_write_nothing(tmp_path, capsys, spec, message):
    out = tmp_path / "out"
    args = ["audit", "--model", "mlp", "--data", "digits", "--image-size", "8", "--server", spec, "--out", str(out)]
    assert main(args + ["--quiet"]) == 2
    assert message in capsys.readouterr().err and not list(out.glob("*"))


def test_a_strategy_is_rebuilt_from_an_observations_record():
    from gradleak.servers import Imprint, server_from_json

    obs, _ = simulate(Scenario(**TINY, server=Imprint(bins=16, measurement="avg")))
    assert "weight" in obs.server  # the record holds what prepare did, beyond the settings
    again = server_from_json(obs.server)
    assert isinstance(again, Imprint) and again.to_json() == Imprint(bins=16, measurement="avg").to_json()
