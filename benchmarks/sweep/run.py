#!/usr/bin/env python
"""The committed privacy–utility sweep (`sweep.json`, `sweep.md`, `privacy_utility.png`), and its check.

    python benchmarks/sweep/run.py            # reruns `gradleak sweep` with the committed settings (about 1 min idle)
    python benchmarks/sweep/run.py --check    # reruns two leakage cells and one utility cell, compares

Every leakage and utility cell runs at one torch thread with its own seed, so a cell reproduces on its own;
``--check`` fails (exit 1) when a rerun PSNR, SSIM, label accuracy or test accuracy differs from `sweep.json`
by more than :data:`TOL`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gradleak.scenario import Scenario
from gradleak.sweep import SweepPlan, leakage_cell, utility_cell

HERE = Path(__file__).resolve().parent
COMMAND = [
    "--clients",
    "6",
    "--iterations",
    "400",
    "--train-steps",
    "300",
    "--attack",
    "inverting_gradients",
]  # the committed run
CHECK_CELLS = [("none", 0), ("noise:0.1", 0)]
TOL = {"psnr": 0.01, "ssim": 1e-3, "label_accuracy": 1e-9, "test_accuracy": 1e-9}


def plan_of(results: dict) -> SweepPlan:
    """The plan a committed sweep.json was made with."""
    c = results["config"]
    return SweepPlan(
        scenario=Scenario.from_json(c["scenario"]),
        settings=tuple(c["settings"]),
        clients=c["clients"],
        attacks=tuple(c["attacks"]),
        iterations=c["iterations"],
        label_methods=tuple(c["label_methods"]),
        train_steps=c["train_steps"],
        train_batch=c["train_batch"],
        train_lr=c["train_lr"],
        test_fraction=c["test_fraction"],
    )


def check(path: Path) -> int:
    committed = json.loads(path.read_text())
    plan = plan_of(committed)
    bad = []
    for setting, client in CHECK_CELLS:
        old = next(c for c in committed["cells"] if c["setting"] == setting and c["client"] == client)
        new = leakage_cell(plan, setting, client)
        pairs = [("label_accuracy", old["label_accuracy"], new["label_accuracy"])]
        for attack, v in old["attacks"].items():
            pairs += [(k, v[k], new["attacks"][attack][k]) for k in ("psnr", "ssim")]
        for key, a, b in pairs:
            if abs(a - b) > TOL[key]:
                bad.append(f"{setting} client {client} {key}: {b} vs committed {a}")
        print(f"{setting} client {client}: " + ", ".join(f"{k} {b:.4f}" for k, _, b in pairs), flush=True)
    old_u = next(u for u in committed["utility"] if u["setting"] == "none")
    new_u = utility_cell(plan, "none")
    if abs(old_u["test_accuracy"] - new_u["test_accuracy"]) > TOL["test_accuracy"]:
        bad.append(f"utility none: {new_u['test_accuracy']} vs committed {old_u['test_accuracy']}")
    print(
        f"check: {len(CHECK_CELLS)} leakage cells and one utility cell,",
        "OK" if not bad else "MISMATCH\n  " + "\n  ".join(bad),
        f"(tolerances {TOL})",
    )
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--check", action="store_true", help="rerun a seeded subset and compare; exit 1 on mismatch")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.check:
        return check(Path(args.out) / "sweep.json")
    from gradleak.cli import main as cli

    return cli(["sweep", *COMMAND, "--backend", "process", "--workers", str(args.workers), "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
