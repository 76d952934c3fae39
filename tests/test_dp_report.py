"""The DP guarantees beside the attacks: the sweep's candidate success, bound and ε for DP settings, and the audit
report's DP guarantee."""

import importlib.util

import pytest

from gradleak.auditing import AuditPlan, audit_scenario, make_attacks
from gradleak.defenses import dp_epsilon, parse_defense, reconstruction_bound
from gradleak.report import AuditImages, render_html
from gradleak.scenario import Scenario
from gradleak.sweep import SweepPlan, leakage_cell, markdown_table, run_sweep, utility_cell

pytestmark = pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="needs 'gradleak[dp]'")
TINY = dict(model="mlp", model_kwargs={"width": 64}, dataset="digits", batch_size=2, seed=3)


def test_sweep_reports_success_bound_and_epsilon():
    plan = SweepPlan(settings=("dpfedavg:noise=1",), clients=1, iterations=5, train_steps=3, train_batch=8)
    row = leakage_cell(plan, "dpfedavg:noise=1", 0)
    assert row["bound"] == pytest.approx(reconstruction_bound(0.1, 1.0)) and row["kappa"] == 0.1
    assert row["attacks"]["ig_batch_tv"]["candidate_success"] in (0.0, 1.0)  # batch of one image
    assert leakage_cell(plan, "none", 0)["bound"] is None
    util = utility_cell(plan, "dpfedavg:noise=1")
    assert util["epsilon"] == pytest.approx(dp_epsilon(1.0, 1.0, 3, 1e-5))
    table = markdown_table(run_sweep(plan, backend="serial"))
    assert "bound (1 in 10)" in table and f"{reconstruction_bound(0.1, 1.0):.3f}" in table


def test_audit_report_shows_the_guarantee():
    sc = Scenario(**TINY, defenses=(parse_defense("dpfedavg:noise=2"),))
    result, _ = audit_scenario(sc, AuditPlan(attacks=make_attacks(["analytic_fc"])))
    (privacy,) = result.setting["privacy"]
    assert privacy["unit"] == "client" and privacy["bounds"][0]["bound"] == pytest.approx(reconstruction_bound(0.1, 2))
    html = render_html(result, AuditImages())
    assert "DP guarantee" in html and f"{reconstruction_bound(0.1, 2.0):.3g}" in html
    plain, _ = audit_scenario(Scenario(**TINY), AuditPlan(attacks=make_attacks(["analytic_fc"])))
    assert plain.setting["privacy"] == [] and "DP guarantee" not in render_html(plain, AuditImages())
