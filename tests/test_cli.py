"""The command line end to end on tiny cases, and its handling of bad input."""

import json
import pickle

from gradleak.cli import main

TINY = ["--model", "mlp", "--data", "digits", "--image-size", "8", "--iterations", "30", "--quiet"]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("inverting_gradients", "dlg", "idlg", "clip", "convnet", "photos"):
        assert name in out
    assert main(["list", "--json"]) == 0
    assert "attacks" in json.loads(capsys.readouterr().out)


def test_audit_writes_results_report_and_grid(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "audit",
                *TINY,
                "--attack",
                "inverting_gradients",
                "--attack",
                "dlg",
                "--defense",
                "clip:100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == 1
    assert [a["name"] for a in res["attacks"]] == ["inverting_gradients", "dlg"]
    for a in res["attacks"]:
        assert a["error"] is None and len(a["psnr"]) == 1 and a["lpips"] is None
        assert (out / a["images"]["grid"]).exists()
    used = res["labels"]["methods"][res["labels"]["used_by_attacks"]]
    assert used["requested"] == "auto" and used["label_accuracy"] == 1.0
    assert res["scenario"]["defenses"] == [{"name": "clip", "max_norm": 100.0}]
    html = (out / "report.html").read_text()
    assert "inverting_gradients" in html and "data:image/png;base64," in html
    assert "verdict" in capsys.readouterr().out


def test_labels_command(tmp_path, capsys):
    assert (
        main(
            [
                "labels",
                "--model",
                "mlp",
                "--data",
                "digits",
                "--image-size",
                "8",
                "--batch-size",
                "4",
                "--unique-labels",
                "--method",
                "sum",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["labels"]["methods"]["sum"]["label_accuracy"] == 1.0


def test_pickle_weights_are_refused_and_earlier_results_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["audit", *TINY, "--out", str(out)]) == 0
    before = (out / "results.json").read_bytes()
    bad = tmp_path / "w.pth"
    bad.write_bytes(pickle.dumps({"x": 1}))
    assert main(["audit", *TINY, "--weights", str(bad), "--out", str(out)]) == 2
    assert "pickle" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_fedavg_audit_reports_what_the_attacker_assumed(tmp_path):
    out = tmp_path / "fa"
    assert (
        main(
            [
                "audit",
                *TINY,
                "--protocol",
                "fedavg",
                "--local-steps",
                "3",
                "--local-lr",
                "0.1",
                "--assume-local-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["protocol"]["local_steps"] == 3
    assert res["scenario"]["attacker_assumes"]["protocol"]["local_steps"] == 2
    assert res["attacks"][0]["assumptions"]["protocol"]["local_steps"] == 2


def test_checkpoint_dir_resumes_a_finished_run(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "o"
    assert main(["audit", *TINY, "--checkpoint-dir", str(ck), "--out", str(out)]) == 0
    saved = (ck / "ig_batch_tv.checkpoint.safetensors").stat()
    first = json.loads((out / "results.json").read_text())["attacks"][0]
    assert main(["audit", *TINY, "--checkpoint-dir", str(ck), "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())["attacks"][0]
    assert again["psnr"] == first["psnr"]
    # a finished run resumes at its last iteration: no step runs, so the checkpoint is never rewritten
    resumed = (ck / "ig_batch_tv.checkpoint.safetensors").stat()
    assert (resumed.st_ino, resumed.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)


def test_audit_prints_its_cost_estimate_before_running(tmp_path, capsys):
    out = tmp_path / "est"
    loud = [a for a in TINY if a != "--quiet"]
    assert main(["audit", *loud, "--attack", "inverting_gradients", "--attack", "dlg", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    first_bar = err.index("%|")  # the first progress bar comes after the estimate
    assert -1 < err.index("estimated cost") < first_bar
    assert "inverting_gradients: ≈" in err and "(30 steps ×" in err
    assert "dlg: ≈" in err and "(600 steps ×" in err  # L-BFGS: 30 iterations × up to 20 evaluations
    res = json.loads((out / "results.json").read_text())
    by_name = {a["name"]: a for a in res["attacks"]}
    assert by_name["inverting_gradients"]["estimated_seconds"] > 0 and by_name["dlg"]["estimated_seconds"] > 0


def test_analytic_attacks_have_no_cost_estimate():
    import gradleak as gl

    obs, truth = gl.simulate(gl.Scenario(model="mlp", dataset="digits", image_size=8))
    plan = gl.AuditPlan(attacks=gl.make_attacks(["analytic_fc"]), estimate_costs=True)
    run = gl.audit(obs, plan, truth=truth).attacks[0]
    assert run.error is None and run.estimate is None and run.scores is not None  # no matching steps to estimate
