"""``gradleak labels``: label recovery only (fast), on the same scenario flags as ``audit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli_args import output_dir
from ..scenario_args import add_scenario_args, scenario_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("labels", help="label recovery only (fast)")
    add_scenario_args(p)
    p.add_argument("--method", action="append", help="label method (repeatable; default auto)")
    p.add_argument("--out", type=output_dir, help="also write OUT/results.json")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..auditing import AuditPlan, audit_scenario
    from ..report import write_json_atomic

    plan = AuditPlan(label_methods=tuple(a.method or ["auto"]), attacks=())
    result, _ = audit_scenario(scenario_from_args(a), plan)
    sec = result.labels
    print(f"true labels: {list(sec.true or ())}")
    print(f"{'method':<22} {'accuracy':>8} {'seconds':>9}  recovered / error")
    for r in sec.runs:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        secs = "-" if r.result is None else f"{r.result.seconds:.4f}"
        print(f"{r.method:<22} {acc:>8} {secs:>9}  {r.error or (r.result.labels if r.result else '')}")
    if a.out:
        write_json_atomic(Path(a.out) / "results.json", result.to_json())
    failed = [r for r in sec.runs if r.error]
    for r in failed:
        print(f"gradleak: error: {r.error}", file=sys.stderr)
    return 2 if failed else 0
