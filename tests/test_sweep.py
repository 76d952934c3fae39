"""The privacy–utility sweep on a tiny grid: grid expansion, cells, summary, files, CLI, process pool, and the
checkpoints of the server model's training as one more axis."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gradleak.auditing import AuditPlan, make_attacks
from gradleak.cli import main
from gradleak.data import load_dataset
from gradleak.errors import InputError
from gradleak.over_training import Checkpoint, audit_checkpoint, load_checkpoint, save_checkpoints
from gradleak.scenario import Scenario, build_scenario_model
from gradleak.servers import Imprint
from gradleak.sweep import (
    NONE,
    SweepPlan,
    expand_grid,
    leakage_cell,
    run_jobs,
    run_sweep,
    strength,
    threat_text,
    utility_cell,
    write_sweep,
)

TINY = dict(clients=1, iterations=5, train_steps=3, train_batch=8)
SMALL = Scenario(model="mlp", model_kwargs={"width": 16}, dataset="digits", image_size=8, batch_size=2)


def test_expand_grid_and_strength_direction():
    assert expand_grid("dpsgd:noise=0.5|1,clip=1|2") == [
        "dpsgd:noise=0.5,clip=1",
        "dpsgd:noise=0.5,clip=2",
        "dpsgd:noise=1,clip=1",
        "dpsgd:noise=1,clip=2",
    ]
    assert expand_grid("noise:0.1") == ["noise:0.1"]
    assert strength("noise:0.1")[1] < strength("noise:1")[1]
    assert strength("quantize:8")[1] < strength("quantize:2")[1]  # fewer bits = stronger
    assert strength(NONE) == (NONE, 0.0)
    with pytest.raises(InputError):
        SweepPlan(settings=("noise:-1",))
    with pytest.raises(InputError):
        SweepPlan(settings=("smooth:abc",))


def test_cells_measure_leakage_and_utility():
    plan = SweepPlan(settings=("noise:0.1",), **TINY)
    row = leakage_cell(plan, "noise:0.1", 0)
    assert row["label_accuracy"] in (0.0, 1.0) and row["defense_records"] == [{"name": "noise", "sigma": 0.1}]
    assert row["attacks"]["ig_batch_tv"]["psnr"] > 0
    util = utility_cell(plan, "smooth:0.1")
    assert 0 <= util["test_accuracy"] <= 1 and util["steps"] == 3


def test_run_sweep_writes_json_plot_markdown_and_html(tmp_path):
    plan = SweepPlan(settings=("noise:0.01", "noise:1", "soteria:0.5"), **TINY)
    res = run_sweep(plan, backend="serial")
    paths = write_sweep(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [r["setting"] for r in data["summary"]["settings"]] == [NONE, "noise:0.01", "noise:1", "soteria:0.5"]
    assert len(data["cells"]) == 4 and set(data["summary"]["trends"]) == {"noise", "soteria"}
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "noise:1" in paths["md"].read_text()
    assert "threat model: honest server, one client's update" in paths["md"].read_text()
    assert "curve" not in paths and "| steps |" not in paths["md"].read_text()
    assert {c["checkpoint"] for c in data["cells"]} == {None} and data["checkpoints"] == []
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "<table>" in html


def test_threat_text_names_the_server_and_the_aggregation():
    sc = Scenario(clients=4, server=Imprint(bins=16)).to_json()
    assert threat_text(sc) == "malicious server `imprint`, secure aggregation of 4 clients' updates"


@pytest.mark.slow
def test_process_pool_runs_jobs_in_order():
    jobs = [(strength, ("noise:0.1",)), (strength, ("quantize:4",)), (strength, (NONE,))]
    assert run_jobs(jobs, backend="process", workers=2) == [("noise", 0.1), ("quantize", -4.0), (NONE, 0.0)]


def test_sweep_command(tmp_path, capsys):
    assert (
        main(
            [
                "sweep",
                "--grid",
                "noise:0.01|0.1",
                "--clients",
                "1",
                "--iterations",
                "5",
                "--train-steps",
                "2",
                "--backend",
                "serial",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "sweep.json").exists() and (tmp_path / "report.html").exists()
    assert "noise:0.1" in capsys.readouterr().out
    assert main(["sweep", "--grid", "blur:3", "--out", str(tmp_path)]) == 2
    small = ["--model", "mlp", "--model-kwargs", '{"width": 16}', "--image-size", "8", "--batch-size", "2"]
    argv = ["sweep", *small, "--grid", "noise:0.1", "--clients", "1", "--iterations", "2", "--train-steps", "2"]
    assert main([*argv, "--victim-checkpoints", "0,5", "--backend", "serial", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 0 | `none` |" in out and "| 5 | `noise:0.1` |" in out
    assert (tmp_path / "leakage_over_training.png").exists()


def psnr(row):
    return row["attacks"]["ig_batch_tv"]["psnr"]


def test_checkpoint_cells_attack_the_saved_weights(tmp_path):
    plan = SweepPlan(scenario=SMALL, settings=(), victim_checkpoints=(0, 30), **TINY)
    saved = save_checkpoints(SMALL, plan.victim_checkpoints, tmp_path)
    assert [(c.steps, c.training.steps, Path(c.weights).name) for c in saved] == [
        (0, 0, "steps_0.safetensors"),
        (30, 30, "steps_30.safetensors"),
    ]
    data = load_dataset("digits", size=8)
    init, _ = build_scenario_model(SMALL, data.num_classes, data.image_shape)
    at0, at30 = (load_checkpoint(SMALL, c, data) for c in saved)
    assert all(torch.equal(at0.model.state_dict()[k], v) for k, v in init.state_dict().items())
    assert not torch.equal(at30.model.head.weight, init.head.weight)
    rows = [leakage_cell(plan, NONE, 0, c) for c in saved]  # client 0 runs at seed 1; the model was trained at 0
    assert [r["checkpoint"] for r in rows] == [0, 30]
    audit_plan = AuditPlan(attacks=make_attacks(plan.attacks, iterations=plan.iterations), seed=SMALL.seed)
    on_init = audit_checkpoint(replace(SMALL, seed=1), audit_plan, Checkpoint(0, init, saved[0].training, at0.held_out))
    assert psnr(rows[0]) == on_init.result.attacks[0].scores.mean_psnr
    assert psnr(rows[1]) != psnr(rows[0])


def test_sweep_over_checkpoints_names_each_checkpoint(tmp_path):
    plan = SweepPlan(scenario=SMALL, settings=("noise:0.1",), victim_checkpoints=(0, 30), **TINY)
    res = run_sweep(plan, backend="serial")
    grid = [(0, NONE), (0, "noise:0.1"), (30, NONE), (30, "noise:0.1")]
    assert [(c["checkpoint"], c["setting"]) for c in res["cells"]] == grid
    assert [c["training"]["steps"] for c in res["checkpoints"]] == [0, 30]
    assert res["checkpoints"][1]["training"]["test_accuracy"] > res["checkpoints"][0]["training"]["test_accuracy"]
    rows = res["summary"]["settings"]
    assert [(r["checkpoint"], r["setting"]) for r in rows] == grid
    assert rows[0]["test_accuracy"] == rows[2]["test_accuracy"]  # utility does not depend on the checkpoint
    assert set(res["summary"]["trends"]) == {"noise at 0 steps", "noise at 30 steps"}
    paths = write_sweep(res, tmp_path)
    md = paths["md"].read_text()
    assert "| 0 | `none` |" in md and "| 30 | `noise:0.1` |" in md and "at 0, 30 training steps" in md
    assert paths["curve"] == tmp_path / "leakage_over_training.png" and paths["curve"].stat().st_size > 1000
    assert "![leakage over training](leakage_over_training.png)" in md
    assert json.loads(paths["json"].read_text())["config"]["victim_checkpoints"] == [0, 30]


def test_bad_checkpoints_are_refused_by_the_plan():
    with pytest.raises(InputError, match="increasing order, each once"):
        SweepPlan(settings=("noise:0.01",), victim_checkpoints=(30, 0))
    with pytest.raises(InputError, match="not also as the scenario's train_steps"):
        SweepPlan(settings=("noise:0.01",), scenario=replace(SMALL, train_steps=5), victim_checkpoints=(0, 5))
