"""Trained victims and leakage over training: the held-out split, Scenario(train_steps=N), one incremental training
audited at several checkpoints, their files and the command-line flags."""

import json
from dataclasses import replace

import pytest
import torch

import gradleak as gl
from gradleak.cli import main
from gradleak.data import load_dataset
from gradleak.errors import InputError
from gradleak.over_training import audit_over_training, checkpoints, curve, write_over_training
from gradleak.victim import VictimTrainer, split_held_out

SC = gl.Scenario(model="mlp", model_kwargs={"width": 16}, dataset="digits", image_size=8, batch_size=4, seed=3)
SMALL = ["--model", "mlp", "--model-kwargs", '{"width": 16}', "--data", "digits", "--image-size", "8"]
LABELS_ONLY = gl.AuditPlan(label_methods=("auto", "llg-simple"), attacks=())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", size=8)


def rows_of(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


def test_split_alternates_every_class_and_is_disjoint(digits):
    train, held = split_held_out(digits)
    assert len(train) + len(held) == len(digits) and not rows_of(train.images) & rows_of(held.images)
    for c in range(10):
        members = torch.nonzero(digits.labels == c).flatten()
        assert torch.equal(train.images[train.labels == c], digits.images[members[0::2]])
        assert torch.equal(held.images[held.labels == c], digits.images[members[1::2]])
    one_each = digits.subset(torch.tensor([int(torch.nonzero(digits.labels == c)[0]) for c in range(10)]))
    with pytest.raises(InputError, match="nothing is left to hold out"):
        split_held_out(one_each)


def test_trained_scenario_draws_held_out_images_and_records_accuracy(digits):
    obs0, truth0 = gl.simulate(SC)
    assert truth0.training is None
    obs, truth = gl.simulate(replace(SC, train_steps=40, train_lr=0.1))
    train, held = split_held_out(digits)
    assert rows_of(truth.images) <= rows_of(held.images) and not rows_of(truth.images) & rows_of(train.images)
    t = truth.training
    assert (t.steps, t.batch_size, t.lr, t.train_images, t.held_out_images) == (40, 32, 0.1, len(train), len(held))
    assert t.test_accuracy > 0.3 and t.train_accuracy > 0.3  # an untrained 10-class model is near 0.1
    assert not torch.equal(obs.model.head.weight, obs0.model.head.weight)
    assert not obs.model.training  # the scenario's BN mode (eval) after training in train mode
    with pytest.raises(InputError, match="train_batch >= 2"):
        replace(SC, train_steps=1, train_batch=1)
    assert gl.Scenario.from_json(replace(SC, train_steps=7, train_lr=0.5).to_json()).train_steps == 7


def test_checkpoints_continue_one_training_and_match_the_trained_scenario(digits):
    cps = list(checkpoints(SC, (0, 20, 50)))
    assert [c.steps for c in cps] == [0, 20, 50]
    assert [c.training.steps for c in cps] == [0, 20, 50]
    direct, truth = gl.simulate(replace(SC, train_steps=50))
    at50, truth50 = gl.simulate(replace(SC, train_steps=50), cps[-1].held_out, cps[-1].model)
    for k, v in direct.update.items():
        assert torch.equal(at50.update[k], v)
    assert torch.equal(truth.images, truth50.images) and truth.training.test_accuracy == cps[-1].training.test_accuracy
    w = [c.model.head.weight for c in cps]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # copies, not the same trained model
    with pytest.raises(InputError, match="not also as the scenario's train_steps"):
        list(checkpoints(replace(SC, train_steps=5), (0, 5)))
    for bad in ((20, 0), (0, 20, 20), (-1, 5), ()):
        with pytest.raises(InputError, match="increasing order, each once"):
            list(checkpoints(SC, bad))
    trainer = VictimTrainer(cps[0].model, cps[0].held_out, batch_size=4)
    trainer.advance(2)
    with pytest.raises(InputError, match="already trained for 2 steps"):
        trainer.advance(1)


def test_audit_over_training_follows_one_batch_and_writes_the_curve(tmp_path):
    audits = audit_over_training(SC, LABELS_ONLY, (0, 30))
    assert [a.steps for a in audits] == [0, 30]
    assert torch.equal(audits[0].truth.images, audits[1].truth.images)  # the same held-out batch at each checkpoint
    rows = curve(audits)
    assert [r["training"]["steps"] for r in rows] == [0, 30]
    assert set(rows[0]["labels"]) == {"auto", "llg-simple"} and rows[0]["label_picks"]["auto"] != "auto"
    paths = write_over_training(audits, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["kind"] == "over-training" and [r["steps"] for r in saved["checkpoints"]] == [0, 30]
    assert paths["plot"].stat().st_size > 1000 and "| 30 |" in paths["md"].read_text()
    at30 = json.loads((tmp_path / "steps_30" / "results.json").read_text())
    assert at30["scenario"]["training"]["steps"] == 30 and at30["config"]["train_steps"] == 30
    assert "held-out test accuracy" in (tmp_path / "steps_30" / "report.html").read_text()


def test_labels_command_trains_the_victim_and_runs_checkpoints(tmp_path, capsys):
    out = tmp_path / "one"
    argv = ["labels", *SMALL, "--batch-size", "4", "--victim-train-steps", "20", "--victim-train-batch", "8"]
    assert main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["training"]["steps"] == 20 and res["scenario"]["training"]["batch_size"] == 8
    assert "held-out test accuracy" in capsys.readouterr().out
    curve_out = tmp_path / "curve"
    assert main(["labels", *SMALL, "--batch-size", "4", "--victim-checkpoints", "0,10", "--out", str(curve_out)]) == 0
    saved = json.loads((curve_out / "over_training.json").read_text())
    assert [r["steps"] for r in saved["checkpoints"]] == [0, 10]
    assert (curve_out / "leakage_over_training.png").exists() and (curve_out / "steps_10" / "results.json").exists()


def test_flower_refuses_a_pretrained_victim():
    from gradleak.fl.task import FlowerTask

    with pytest.raises(InputError, match="--victim-train-steps applies to audit"):
        FlowerTask(scenario=replace(SC, train_steps=3))


def test_victim_training_gives_one_model_whatever_the_thread_count():
    """The training runs on one thread (float sums follow the thread count), and the caller's count is restored."""
    sc = gl.Scenario(model="convnet", model_kwargs={"width": 16}, dataset="photos", image_size=32, train_batch=8)
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            cp = list(checkpoints(sc, (30,)))[0]
            assert torch.get_num_threads() == n
            weights.append(cp.model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for k, v in weights[0].items():
        assert torch.equal(weights[1][k], v), k
