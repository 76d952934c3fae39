"""The one audit API: gradleak.audit / audit_scenario, typed results, one scenario surface, attack settings."""

import json

import pytest
import torch

import gradleak as gl
from gradleak.cli import main, parser
from gradleak.results import AuditResult
from gradleak.scenario_args import scenario_from_args

TINY = dict(model="mlp", dataset="digits", image_size=8)


def test_cli_and_api_share_one_scenario_default():
    args = parser().parse_args(["audit"])
    assert scenario_from_args(args) == gl.Scenario()
    assert gl.Scenario().bn_mode == "eval" and not gl.Scenario().unique_labels
    for command in (["sweep"], ["fl-demo"]):  # they pick another model and data, never another BN mode
        sc = scenario_from_args(parser().parse_args(command))
        assert sc.bn_mode == "eval" and sc.model == "mlp" and sc.model_kwargs == {"width": 64}


def test_api_and_cli_give_the_same_psnr(tmp_path):
    scenario = gl.Scenario(**TINY, seed=3)
    plan = gl.AuditPlan(attacks=(gl.attacks.InvertingGradientsBatchTV(iterations=25),), seed=scenario.seed)
    result, truth = gl.audit_scenario(scenario, plan)
    assert (
        main(
            [
                "audit",
                "--model",
                "mlp",
                "--data",
                "digits",
                "--image-size",
                "8",
                "--seed",
                "3",
                "--iterations",
                "25",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["attacks"][0]["mean_psnr"] == result.attack("ig_batch_tv").mean_psnr
    assert written["attacks"][0]["name"] == "ig_batch_tv"  # the default attack
    assert written["labels"]["true"] == truth.labels.tolist()


def test_result_is_typed_and_json_round_trips():
    obs, truth = gl.simulate(gl.Scenario(**TINY, batch_size=2))
    plan = gl.AuditPlan(
        label_methods=("auto", "sum", "idlg"), attacks=(gl.attacks.InvertingGradients(iterations=5), gl.attacks.RGAP())
    )
    result = gl.audit(obs, plan, truth=truth)
    assert [r.requested for r in result.labels.runs] == ["auto", "sum", "idlg"]
    assert result.labels.runs[2].error is not None and "single sample" in result.labels.runs[2].error
    assert result.labels.chosen is result.labels.runs[0]
    ig, rgap = result.attacks
    assert ig.error is None and ig.result.images.shape == truth.images.shape and ig.scores.order is not None
    assert rgap.result is None and "rgap cannot run" in rgap.error and rgap.traceback is None
    data = result.to_json()
    back = AuditResult.from_json(json.loads(json.dumps(data)))
    assert back.to_json() == data and back.attack("inverting_gradients").mean_psnr == ig.mean_psnr
    with pytest.raises(gl.InputError):
        AuditResult.from_json({**data, "schema": 99})


def test_audit_without_truth_scores_nothing_and_keeps_the_verdict_honest():
    obs, _ = gl.simulate(gl.Scenario(**TINY))
    result = gl.audit(obs, gl.AuditPlan(attacks=gl.make_attacks(["inverting_gradients"], iterations=3)))
    assert result.attacks[0].scores is None and result.labels.chosen.accuracy is None
    assert result.verdict.level == "low" and "nothing scored" in result.verdict.summary


def test_a_crashing_attack_keeps_the_others(monkeypatch):
    obs, truth = gl.simulate(gl.Scenario(**TINY))
    ig = gl.attacks.InvertingGradients(iterations=3)
    broken = gl.attacks.DLG(iterations=1)
    monkeypatch.setattr(broken, "run", lambda *a, **k: 1 / 0)
    result = gl.audit(obs, gl.AuditPlan(attacks=(broken, ig)), truth=truth)
    assert result.attacks[0].error == "ZeroDivisionError: division by zero" and result.attacks[0].traceback
    assert result.attacks[1].scores is not None


def test_settings_that_do_not_apply_are_errors_naming_method_and_setting():
    with pytest.raises(gl.InputError, match="attack 'analytic_fc' has no setting 'iterations'"):
        gl.make_attacks(["inverting_gradients", "analytic_fc"], iterations=10)
    with pytest.raises(gl.InputError, match="label method 'idlg' has no setting 'probe_inputs'"):
        gl.labels.IDLG(probe_inputs=3)
    assert gl.make_attacks(["inverting_gradients"], iterations=None)[0].config.iterations == 600  # None: default
    fishing = gl.make_attacks(["fishing:tv=0, iterations=50"], iterations=10)[0].config  # the spec's own wins
    assert (fishing.tv, fishing.iterations) == (0.0, 50)
    for spec, why in [
        ("fishing:tv", "expected KEY=VALUE"),
        ("fishing:steps=3", "expected KEY=VALUE"),
        ("fishing:iterations=1.5", "is not of type int"),
        ("inverting_gradients:prune_at=0.1", "cannot be given in a spec"),
    ]:
        with pytest.raises(gl.InputError, match=why):
            gl.make_attacks([spec])
    assert gl.labels.LLGWhitebox(probe_inputs=8).config.probe_inputs == 8


def test_labels_none_means_auto_for_every_attack_that_needs_labels():
    obs, _ = gl.simulate(gl.Scenario(**TINY, batch_size=2, unique_labels=True))
    auto = gl.recover_labels(obs)
    for attack in (gl.attacks.InvertingGradients(iterations=2), gl.attacks.GradInversion(iterations=2, restarts=1)):
        res = attack.run(obs, None, generator=torch.Generator().manual_seed(0))
        assert sorted(res.labels) == sorted(auto.labels), attack.name


def test_realistic_batches_repeat_labels_unless_asked():
    sc = gl.Scenario(model="mlp", dataset="faces", image_size=8, batch_size=6)
    _, truth = gl.simulate(sc)
    assert len(set(truth.labels.tolist())) < 6  # faces has 2 classes: a loader's batch repeats them
    with pytest.raises(gl.InputError, match="unique labels"):
        gl.simulate(gl.Scenario(model="mlp", dataset="faces", image_size=8, batch_size=6, unique_labels=True))
