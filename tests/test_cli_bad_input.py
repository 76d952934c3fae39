"""Bad command lines: every one exits 2 with one error line, no traceback, and writes nothing outside --out.

The concrete cases are the issue's regressions; the property tests feed generated values to every numeric
flag of ``audit``, ``labels`` and ``sweep`` and parse + validate only (no audit runs)."""

import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradleak as gl
from gradleak.attacks.matching import MatchingConfig, MatchingProblem, run_matching
from gradleak.cli import main, parser
from gradleak.errors import CheckpointError, GradleakError, InputError
from gradleak.labels import recover_labels
from gradleak.scenario_args import scenario_from_args
from gradleak.sweep import SweepPlan

SMALL = ["--model", "mlp", "--data", "digits", "--image-size", "8", "--quiet"]
TINY = [*SMALL, "--iterations", "2"]
ERROR_LINE = re.compile(r"^gradleak(?: [\w-]+)?: error: ", re.MULTILINE)

CASES = [
    # numeric flags of the scenario (audit and labels)
    (["audit", *TINY, "--iterations", "-1"], "--iterations"),
    (["audit", *TINY, "--iterations", "0"], "--iterations"),
    (["audit", *TINY, "--restarts", "0"], "--restarts"),
    (["audit", *TINY, "--restarts", "4", "--prune-at", "0.5,0.2"], "--prune-at"),
    (["audit", *TINY, "--restarts", "4", "--prune-at", "1"], "--prune-at"),
    (["audit", *TINY, "--prune-at", "0.5"], "early elimination (prune_at) needs restarts >= 2"),
    (["audit", *TINY, "--seed", "99999999999999999999999"], "--seed"),
    (["audit", *TINY, "--seed", "-1"], "--seed"),
    (["audit", *TINY, "--image-size", "100000"], "--image-size"),
    (["audit", *TINY, "--image-size", "0"], "--image-size"),
    (["audit", *TINY, "--batch-size", "0"], "--batch-size"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-steps", "0"], "--local-steps"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-steps", "1000000000"], "--local-steps"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-lr", "nan"], "--local-lr"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-lr", "inf"], "--local-lr"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-lr", "0"], "--local-lr"),
    (["audit", *TINY, "--protocol", "fedavg", "--local-batch", "0"], "--local-batch"),
    (["audit", *TINY, "--protocol", "fedavg", "--assume-local-steps", "0"], "--assume-local-steps"),
    (["audit", *TINY, "--label-smoothing", "1"], "--label-smoothing"),
    (["audit", *TINY, "--label-smoothing", "-0.1"], "--label-smoothing"),
    (["audit", *TINY, "--mixup", "0"], "--mixup"),
    (["audit", *TINY, "--mixup", "nan"], "--mixup"),
    (["labels", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["labels", "--data", "digits", "--seed", "1e3"], "--seed"),
    (["labels", "--data", "digits", "--victim-train-steps", "-1"], "--victim-train-steps"),
    (["labels", "--data", "digits", "--victim-train-batch", "1"], "--victim-train-batch"),
    (["audit", *TINY, "--victim-train-lr", "0"], "--victim-train-lr"),
    (["audit", *TINY, "--victim-checkpoints", "0,x"], "--victim-checkpoints"),
    (["labels", "--data", "digits", "--victim-checkpoints", ","], "--victim-checkpoints"),
    (["audit", *TINY, "--victim-train-steps", "5", "--victim-checkpoints", "0,5"], "not also as the scenario's"),
    (["labels", "--data", "digits", "--victim-checkpoints", "10,0"], "increasing order, each once"),
    # names, settings and resources
    (["audit", *TINY, "--model", ":"], "module:factory"),
    (["audit", *TINY, "--model", "nope"], "unknown model 'nope'"),
    (["audit", *TINY, "--defense", "blur:3"], "unknown defense 'blur'"),
    (["audit", *TINY, "--defense", "clip:-2"], "positive"),
    (["audit", *TINY, "--attack", "nope"], "unknown attack"),
    (["audit", *TINY, "--data", "faces", "--batch-size", "3", "--unique-labels"], "unique labels"),
    (["audit", *SMALL, "--attack", "analytic_fc", "--restarts", "4"], "attack 'analytic_fc' has no setting 'restarts'"),
    (["audit", *SMALL, "--attack", "analytic_fc", "--iterations", "5"], "has no setting 'iterations'"),
    (["audit", *TINY, "--prior", "p.safetensors"], "--prior applies to attacks with a generative prior"),
    (["audit", *TINY, "--attack", "ggl", "--prior", "missing.safetensors"], "does not exist"),
    (["audit", *TINY, "--data", "/no/such/dir"], "/no/such/dir"),
    (["labels", "--data", "digits", "--batch-size", "12", "--method", "sum"], "batch size"),
    # output folders
    (["audit", *TINY, "--out", "afile"], "not a folder"),
    (["audit", *TINY, "--out", "afile/sub"], "not a folder"),
    (["audit", *TINY, "--checkpoint-dir", "afile"], "--checkpoint-dir"),
    (["labels", "--data", "digits", "--out", "afile"], "not a folder"),
    (["analyze", "--model", "mlp", "--out", "afile/x"], "not a folder"),
    (["train-prior", "--out", "afile"], "not a folder"),
    (["sweep", "--out", "afile"], "not a folder"),
    (["fl-demo", "--out", "afile"], "not a folder"),
    # analyze
    (["analyze", "--exact-limit", "-1"], "--exact-limit"),
    (["analyze", "--model", "lenet", "--input-shape", "3,8"], "--input-shape"),
    (["analyze", "--model", ":"], "module:factory"),
    (["analyze", "--num-classes", "1"], "--num-classes"),
    # sweep
    (["sweep", "--iterations", "-1"], "--iterations"),
    (["sweep", "--clients", "0"], "--clients"),
    (["sweep", "--train-steps", "-1"], "--train-steps"),
    (["sweep", "--workers", "0"], "--workers"),
    (["sweep", "--train-lr", "nan"], "--train-lr"),
    (["sweep", "--victim-checkpoints", "-1"], "--victim-checkpoints"),
    (["sweep", "--victim-checkpoints", "100,10"], "increasing order, each once"),
    (["sweep", "--victim-checkpoints", "0,10,10"], "increasing order, each once"),
    (["sweep", "--grid", "noise:0.01", "--victim-train-steps", "5", "--victim-checkpoints", "0,5"], "not also as the"),
    # train-prior
    (["train-prior", "--lr", "nan"], "--lr"),
    (["train-prior", "--sample-every", "0"], "--sample-every"),
    (["train-prior", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train-prior", "--steps", "0"], "--steps"),
    (["train-prior", "--image-size", "12"], "--image-size"),
    # fl-demo
    (["fl-demo", "--clients", "1"], "--clients"),
    (["fl-demo", "--rounds", "0"], "--rounds"),
    (["fl-demo", "--max-capture-mb", "0"], "--max-capture-mb"),
    (["fl-demo", "--keep-rounds", "0"], "--keep-rounds"),
    (["fl-demo", "--audit-every", "0"], "--audit-every"),
    (["fl-demo", "--audits-per-round", "-1"], "--audits-per-round"),
    (["fl-demo", "--victim-train-steps", "3", "--out", "o"], "--victim-train-steps applies to audit"),
]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


def assert_one_clean_error(code, err, message):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(ERROR_LINE.findall(err)) == 1, err
    assert message in err, err


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a).replace(" ".join(SMALL), "SMALL") for a, _ in CASES])
def test_bad_invocation_is_one_clean_error(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    has_out = "--out" in argv
    before = tree(tmp_path)
    code, err = run_cli(argv if has_out or argv[0] not in ("audit", "labels") else [*argv, "--out", "o"], capsys)
    assert_one_clean_error(code, err, message)
    after = tree(tmp_path)
    written = {k for k in after.keys() - before.keys() if not (k == "o" or k.startswith("o/"))}
    changed = {k for k in before if after.get(k) != before[k]}
    assert not written and not changed, (written, changed)


def test_dpsgd_without_opacus_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "opacus", None)  # the import fails as without the extra
    code, err = run_cli(["audit", *TINY, "--defense", "dpsgd:1", "--out", str(tmp_path / "o")], capsys)
    assert_one_clean_error(code, err, "pip install 'gradleak[dp]'")


# -- checkpoints: an unusable one is the user's error, before any attack works ------------------------------
@pytest.fixture(scope="module")
def digits():
    return gl.simulate(gl.Scenario(model="mlp", model_kwargs={"width": 16}, dataset="digits", image_size=8, seed=1))


def audit_recording_steps(obs, checkpoint_dir, *, iterations=2):
    steps: list[str] = []
    plan = gl.AuditPlan(
        attacks=gl.make_attacks(["dlg", "inverting_gradients"], iterations=iterations), checkpoint_dir=checkpoint_dir
    )
    try:
        return gl.audit(obs, plan, progress=lambda name, i: lambda step: steps.append(name)), steps
    except GradleakError as e:
        return e, steps


def test_corrupt_checkpoint_stops_the_audit_before_any_attack_works(digits, tmp_path):
    (tmp_path / "inverting_gradients.checkpoint.safetensors").write_bytes(b"garbage")
    error, steps = audit_recording_steps(digits[0], str(tmp_path))
    assert isinstance(error, CheckpointError) and "cannot read checkpoint" in str(error)
    assert steps == []  # dlg, listed first, never stepped either


def test_checkpoint_of_another_run_stops_the_audit_before_its_attack_works(digits, tmp_path):
    other, _ = gl.simulate(gl.Scenario(model="mlp", model_kwargs={"width": 16}, dataset="digits", image_size=8, seed=2))
    result, _ = audit_recording_steps(other, str(tmp_path))
    assert all(run.error is None for run in result.attacks)
    error, steps = audit_recording_steps(digits[0], str(tmp_path))
    assert isinstance(error, CheckpointError) and "another run" in str(error)
    assert "inverting_gradients" not in steps


def test_extended_run_records_where_it_resumed(digits, tmp_path):
    obs, _ = digits
    first, _ = audit_recording_steps(obs, str(tmp_path), iterations=3)
    assert first.attacks[1].result.iterations == 3 and "resumed" not in first.attacks[1].result.config
    again, _ = audit_recording_steps(obs, str(tmp_path), iterations=6)
    res = again.attacks[1].result
    assert res.iterations == 6 and res.config["resumed"] == {"from_iteration": 3, "checkpoint_iterations": 3}


def test_cli_corrupt_checkpoint_is_exit_2_and_writes_no_results(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "ig_batch_tv.checkpoint.safetensors").write_bytes(b"garbage")
    argv = ["audit", *TINY, "--checkpoint-dir", str(ck), "--out", str(tmp_path / "o")]
    code, err = run_cli(argv, capsys)
    assert_one_clean_error(code, err, "cannot read checkpoint")
    assert not (tmp_path / "o" / "results.json").exists()


def test_engine_checkpoint_errors_are_checkpoint_errors(digits, tmp_path):
    obs, _ = digits
    ck = tmp_path / "c.safetensors"
    ck.write_bytes(b"")
    problem = MatchingProblem(obs, torch.tensor(recover_labels(obs).labels), MatchingConfig(iterations=2))
    with pytest.raises(CheckpointError):
        run_matching(problem, batch_size=obs.batch_size, generator=torch.Generator(), checkpoint=ck)


# -- generated values for every numeric flag: parsing and validation only -----------------------------------
VALUES = st.one_of(
    st.integers(-(10**30), 10**30),
    st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1.5),
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "1_000", " 3", "", "-1", "99999999999999999999999"]),
).map(str)
SCENARIO_FLAGS = [
    "--image-size",
    "--batch-size",
    "--local-steps",
    "--local-lr",
    "--local-batch",
    "--assume-local-steps",
    "--assume-local-lr",
    "--assume-local-batch",
    "--label-smoothing",
    "--mixup",
    "--seed",
    "--victim-train-steps",
    "--victim-train-batch",
    "--victim-train-lr",
]
FLAGS = {
    "audit": [*SCENARIO_FLAGS, "--iterations", "--restarts", "--victim-checkpoints"],
    "labels": [*SCENARIO_FLAGS, "--victim-checkpoints"],
    "sweep": [
        *SCENARIO_FLAGS,
        "--iterations",
        "--clients",
        "--train-steps",
        "--train-batch",
        "--train-lr",
        "--workers",
        "--victim-checkpoints",
    ],
}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def parse_and_validate(argv: list[str]) -> None:
    """What a command does with its arguments before any work: parse, build the scenario and the plan."""
    a = parser().parse_args(argv)
    scenario = scenario_from_args(a)
    if a.command == "audit":
        gl.AuditPlan(attacks=gl.make_attacks(["ig_batch_tv"], iterations=a.iterations, restarts=a.restarts))
    if a.command == "sweep":
        SweepPlan(
            scenario=scenario,
            clients=a.clients,
            iterations=a.iterations,
            train_steps=a.train_steps,
            train_batch=a.train_batch,
            train_lr=a.train_lr,
            victim_checkpoints=a.victim_checkpoints or (),
        )


@FAST
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_generated_flag_values_are_accepted_or_a_clean_error(command, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = data.draw(st.lists(st.sampled_from(FLAGS[command]), min_size=1, max_size=4, unique=True))
    argv = [command, "--protocol", "fedavg", *[x for f in flags for x in (f, data.draw(VALUES))]]
    try:
        parse_and_validate(argv)
    except SystemExit as e:
        assert e.code == 2
        assert len(ERROR_LINE.findall(capsys.readouterr().err)) == 1
    except InputError:
        pass
