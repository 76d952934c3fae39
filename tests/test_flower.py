"""A real Flower simulation (2 clients, 3 rounds, tiny MLP) with the capturing server — audits within a budget
(rounds 1 and 3, one client a round), the global model evaluated every round — plus the store and fl-demo's report.

The simulation starts Ray (~50 s, ~2.5 GB): it runs once per session (module fixture), and the tests that use
it are marked slow. Skipped only when the ``flower`` extra is not installed.
"""

import importlib.util
import json

import pytest
import torch

from gradleak.errors import InputError
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
    store = run_simulation(
        TASK, num_clients=2, num_rounds=3, capture_dir=root, num_cpus=2, audit_every=2, audits_per_round=1
    )
    return store


@pytest.mark.slow
@needs_flwr
def test_captured_update_is_the_clients_true_update(simulated):
    from gradleak.fl.flower import true_update

    caps = simulated.captured()
    assert [(c["round"]) for c in caps] == [1, 1, 2, 2, 3, 3]
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
        if c["audit"] is not None:  # the audit hook ran as the rounds went and found the same labels
            assert c["audit"]["labels"]["methods"][rec.method]["recovered"] == sorted(rec.labels)


@pytest.mark.slow
@needs_flwr
def test_audits_keep_their_budget_and_the_global_model_is_evaluated_every_round(simulated):
    from gradleak.victim import evaluate

    caps = simulated.captured()
    first = min((c["client"] for c in caps if c["round"] == 1), key=int)
    audited = [(c["round"], c["client"]) for c in caps if c["audit"] is not None]
    assert audited == [(1, first), (3, first)]  # every 2nd round, one client (the first by node id) a round
    assert sorted(simulated.evaluations) == [0, 1, 2, 3]
    sent3 = simulated.load(3, first)  # round 3's clients trained the global model after round 2
    assert evaluate(sent3.model, TASK.load_data())["accuracy"] == simulated.evaluations[2]["accuracy"]
    assert CaptureStore(simulated.root).evaluations == simulated.evaluations  # kept in the index


@pytest.mark.slow
@needs_flwr
def test_fl_demo_report_has_the_per_round_curve(simulated, tmp_path):
    from gradleak.commands.fl_demo import score_captures, write_report

    results = score_captures(TASK, simulated, 2, tmp_path)
    results.update(
        config={
            **TASK.to_config(),
            "clients": 2,
            "rounds": 3,
            "attacks": [],
            "iterations": None,
            "audit_every": 2,
            "audits_per_round": 1,
        },
        simulation_seconds=1.0,
    )
    write_report(results, tmp_path)
    rounds = results["rounds"]
    assert [len(r["audited"]) for r in rounds] == [1, 0, 1]
    assert [r["mean_label_accuracy"] for r in rounds] == [1.0, None, 1.0]
    assert [r["model_accuracy"] for r in rounds] == [simulated.evaluations[r]["accuracy"] for r in (0, 1, 2)]
    assert (tmp_path / "leakage_per_round.png").stat().st_size > 1000
    assert "## Per round" in (tmp_path / "fl_demo.md").read_text()
    assert "not audited" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
@needs_flwr
def test_rounds_advance_and_the_store_resumes(simulated):
    r1 = simulated.load(1, simulated.captured(1)[0]["client"])
    r2 = simulated.load(2, simulated.captured(2)[0]["client"])
    assert any(not torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()))
    reopened = CaptureStore(simulated.root)
    last, state = reopened.resume()
    assert last == 3 and set(state) == set(r2.model.state_dict())
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


@needs_flwr
def test_audit_budget_rounds_and_clients(tmp_path):
    from gradleak.fl.flower import CaptureStrategy

    task = FlowerTask(scenario=Scenario(model="mlp", model_kwargs={"width": 8}, dataset="digits"))
    spec = task.model_spec(task.load_data())
    strat = CaptureStrategy(CaptureStore(tmp_path), model_spec=spec, audit_every=3, audits_per_round=2)
    assert [r for r in range(1, 11) if strat.audit_due(r, 0)] == [1, 4, 7, 10]
    assert strat.audit_due(4, 1) and not strat.audit_due(4, 2)
    assert not CaptureStrategy(CaptureStore(tmp_path), model_spec=spec, audit=None).audit_due(1, 0)
    with pytest.raises(InputError, match="audit_every must be >= 1"):
        CaptureStrategy(CaptureStore(tmp_path), model_spec=spec, audit_every=0)


def test_store_keeps_evaluations_and_checks_them(tmp_path):
    store = CaptureStore(tmp_path)
    store.add_evaluation(0, {"accuracy": 0.1})
    store.add_evaluation(1, {"accuracy": 0.5})
    assert CaptureStore(tmp_path).evaluations == {0: {"accuracy": 0.1}, 1: {"accuracy": 0.5}}
    index = json.loads((tmp_path / "index.json").read_text())
    index["evaluations"][1]["round"] = -1
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"evaluations\[1\]\.round"):
        CaptureStore(tmp_path)
