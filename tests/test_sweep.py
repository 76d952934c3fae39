"""The privacy–utility sweep on a tiny grid: grid expansion, cells, summary, files, CLI, process pool."""

import json

import pytest

from gradleak.cli import main
from gradleak.errors import InputError
from gradleak.scenario import Scenario
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
    assert row["attacks"]["inverting_gradients"]["psnr"] > 0
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
