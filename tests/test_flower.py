"""A real Flower simulation (2 clients, 2 rounds, tiny MLP) with the capturing server, plus the store.

The simulation starts Ray (~50 s, ~2.5 GB): it runs once per session (module fixture), and the tests that use
it are marked slow. Skipped only when the ``flower`` extra is not installed.
"""

import importlib.util

import pytest
import torch

from gradleak.fl.capture import CaptureStore
from gradleak.fl.task import FlowerTask, client_batch, client_train
from gradleak.labels import recover_labels
from gradleak.metrics import label_accuracy
from gradleak.observation import Observation
from gradleak.protocols import FedAvg, FedSGD, client_update
from gradleak.scenario import Scenario

needs_flwr = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="Flower is not installed: pip install 'gradleak[flower]'"
)
TASK = FlowerTask(
    scenario=Scenario(
        model="mlp", model_kwargs={"width": 32}, dataset="digits", batch_size=3, unique_labels=True, seed=0
    ),
    lr=0.1,
)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    if importlib.util.find_spec("flwr") is None:
        pytest.skip("Flower is not installed: pip install 'gradleak[flower]'")
    from gradleak.fl.flower import run_simulation

    root = tmp_path_factory.mktemp("capture")
    store = run_simulation(TASK, num_clients=2, num_rounds=2, capture_dir=root, num_cpus=2)
    return store


@pytest.mark.slow
@needs_flwr
def test_captured_update_is_the_clients_true_update(simulated):
    from gradleak.fl.flower import true_update

    caps = simulated.captured()
    assert [(c["round"]) for c in caps] == [1, 1, 2, 2]
    assert {int(c["metrics"]["partition-id"]) for c in caps} == {0, 1}
    for c in caps:
        pid = int(c["metrics"]["partition-id"])
        expected, _ = true_update(TASK, simulated, c["round"], c["client"], pid, 2)
        obs = simulated.load(c["round"], c["client"])
        assert obs.kind == "gradient" and obs.batch_size == 3
        for k, v in expected.items():
            torch.testing.assert_close(obs.update[k], v, atol=2e-6, rtol=1e-4)


@pytest.mark.slow
@needs_flwr
def test_label_recovery_on_the_capture_succeeds(simulated):
    for c in simulated.captured():
        batch = client_batch(TASK, TASK.load_data(), int(c["metrics"]["partition-id"]), 2, c["round"])
        rec = recover_labels(simulated.load(c["round"], c["client"]), "auto")
        assert label_accuracy(batch.labels.tolist(), rec.labels) == 1.0
        # the audit hook ran as the rounds went and found the same labels
        assert c["audit"]["labels"]["methods"][rec.method]["recovered"] == sorted(rec.labels)


@pytest.mark.slow
@needs_flwr
def test_rounds_advance_and_the_store_resumes(simulated):
    r1 = simulated.load(1, simulated.captured(1)[0]["client"])
    r2 = simulated.load(2, simulated.captured(2)[0]["client"])
    assert any(not torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()))
    reopened = CaptureStore(simulated.root)
    last, state = reopened.resume()
    assert last == 2 and set(state) == set(r2.model.state_dict())
    before = reopened.entries[f"1/{simulated.captured(1)[0]['client']}"]["bytes"]
    assert reopened.add(1, simulated.captured(1)[0]["client"], r1)["bytes"] == before  # not written twice


@needs_flwr
def test_fedavg_capture_equals_the_local_delta(tmp_path):
    from gradleak.fl.flower import CaptureStrategy

    task = FlowerTask(
        scenario=Scenario(
            model="mlp",
            model_kwargs={"width": 16},
            dataset="digits",
            batch_size=4,
            protocol=FedAvg(3, 0.05, 2),
            label_smoothing=0.1,
        )
    )
    data = task.load_data()
    model = task.initial_model(data)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    returned, metrics, batch = client_train(task, data, model, task.scenario.protocol, task.lr, 1, 2, 1)
    strat = CaptureStrategy(
        CaptureStore(tmp_path),
        model_spec=task.model_spec(data),
        normalization=data.normalization,
        protocol=task.scenario.protocol,
    )
    obs = strat.observation(sent, returned, int(metrics["num-examples"]))
    expected = client_update(model, task.scenario.protocol, data.normalization.normalize(batch.images), batch.targets)
    for k, v in expected.items():
        torch.testing.assert_close(obs.update[k], v)
    assert obs.kind == "delta"


def test_store_is_bounded(tmp_path):
    task = FlowerTask(scenario=Scenario(model="mlp", model_kwargs={"width": 8}, dataset="digits"))
    data = task.load_data()
    model = task.initial_model(data)
    obs = Observation(
        model=model,
        update={k: torch.zeros_like(p) for k, p in model.named_parameters()},
        protocol=FedSGD(),
        num_classes=10,
        input_shape=data.image_shape,
        batch_size=1,
    )
    store = CaptureStore(tmp_path / "a", max_bytes=1)
    assert store.add(1, "7", obs) is not None and store.add(1, "8", obs) is None  # budget reached
    assert store.entries["1/8"]["skipped"] == "max_bytes"
    store = CaptureStore(tmp_path / "b", keep_rounds=1, max_clients_per_round=1)
    for r in (1, 2):
        store.add(r, "7", obs)
        assert store.add(r, "8", obs) is None
        store.finish_round(r, model.state_dict())
    assert [c["round"] for c in store.captured()] == [2]
    assert not (tmp_path / "b" / "round_0001").exists() and CaptureStore(tmp_path / "b").resume()[0] == 2


def test_task_travels_as_flat_config_named_as_the_cli_flags():
    task = FlowerTask(
        scenario=Scenario(
            model="mlp",
            model_kwargs={"width": 8},
            dataset="digits",
            batch_size=2,
            protocol=FedAvg(3, 0.05, 2),
            bn_mode="train",
            mixup=0.5,
            seed=4,
        ),
        lr=0.3,
    )
    cfg = task.to_config()
    assert cfg["batch-size"] == 2 and cfg["local-steps"] == 3 and cfg["bn-mode"] == "train"
    assert FlowerTask.from_config(cfg) == task
    assert FlowerTask.from_config({"model": "mlp", "data": "digits"}).scenario.bn_mode == "eval"  # one default
