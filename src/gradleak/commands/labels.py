"""``gradleak labels``: label recovery only (fast), on the same scenario flags as ``audit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_args import output_dir
from ..scenario_args import add_scenario_args, add_victim_checkpoints, scenario_from_args
from .progress import print_training

if TYPE_CHECKING:
    from ..results import AuditResult


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("labels", help="label recovery only (fast)")
    add_scenario_args(p)
    add_victim_checkpoints(p)
    p.add_argument("--method", action="append", help="label method (repeatable; default auto)")
    p.add_argument(
        "--out",
        type=output_dir,
        help="also write OUT/results.json (with --victim-checkpoints: each checkpoint's folder, the curve and a "
        "report)",
    )
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..auditing import AuditPlan, audit_scenario
    from ..report import write_json_atomic

    plan = AuditPlan(label_methods=tuple(a.method or ["auto"]), attacks=())
    scenario = scenario_from_args(a)
    if a.victim_checkpoints:
        from ..over_training import audit_over_training, write_over_training

        audits = audit_over_training(scenario, plan, a.victim_checkpoints)
        for c in audits:
            print(f"after {c.steps} training steps:")
            print_labels(c.result)
        if a.out:
            print(f"report: {write_over_training(audits, a.out)['html']}")
        results = [c.result for c in audits]
    else:
        result, _ = audit_scenario(scenario, plan)
        print_labels(result)
        if a.out:
            write_json_atomic(Path(a.out) / "results.json", result.to_json())
        results = [result]
    errors = sorted({r.error for result in results for r in result.labels.runs if r.error})
    for e in errors:
        print(f"gradleak: error: {e}", file=sys.stderr)
    return 2 if errors else 0


def print_labels(result: AuditResult) -> None:
    """The server model's training (if any), the true labels and each method's recovery."""
    sec = result.labels
    print_training(result.setting)
    print(f"true labels: {list(sec.true or ())}")
    print(f"{'method':<22} {'accuracy':>8} {'seconds':>9}  recovered / error")
    for r in sec.runs:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        secs = "-" if r.result is None else f"{r.result.seconds:.4f}"
        print(f"{r.method:<22} {acc:>8} {secs:>9}  {r.error or (r.result.labels if r.result else '')}")
