"""``gradleak sweep``: defenses × strengths × attacks over several clients → JSON, plot, HTML report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli_args import nonnegative_int, output_dir, positive_float, positive_int
from ..observation_schema import MAX_BATCH
from ..scenario_args import add_scenario_args, add_victim_checkpoints, scenario_from_args


def register(subparsers: Any) -> None:
    from ..sweep import DEFAULT_GRID

    p = subparsers.add_parser(
        "sweep",
        help="privacy–utility sweep of defenses and strengths (parallel; JSON + plot + HTML)",
        description="Attack simulated clients under each defense setting and train the same model with it; "
        "plot leakage (attack PSNR, label accuracy) against the defended model's test accuracy.",
    )
    p.add_argument(
        "--grid",
        action="append",
        metavar="SPEC",
        help="defense settings with '|' alternatives, e.g. 'dpsgd:noise=0.5|1|2,clip=1', "
        "'noise:0.01|0.1', 'smooth:0.1|0.3', 'mixup:1' (repeatable; default: " + " ".join(DEFAULT_GRID) + ")",
    )
    add_scenario_args(p, model="mlp", data="digits", model_kwargs={"mlp": {"width": 64}, "convnet": {"width": 64}})
    add_victim_checkpoints(p)
    p.add_argument("--clients", type=positive_int(10_000), default=4, help="simulated clients (seeds) per setting")
    p.add_argument("--attack", action="append", help="attack(s) (default ig_batch_tv)")
    p.add_argument(
        "--iterations", type=positive_int(), help="each attack's iteration budget (default: the attack's own)"
    )
    p.add_argument(
        "--train-steps", type=nonnegative_int(), default=300, help="training steps for the utility measurement"
    )
    p.add_argument(
        "--candidates",
        type=positive_int(100_000),
        default=10,
        help="K: each client image is identified among itself and K-1 decoys (prior 1/K of the DP bound)",
    )
    p.add_argument("--train-batch", type=positive_int(MAX_BATCH), default=32)
    p.add_argument("--train-lr", type=positive_float(), default=0.1)
    p.add_argument(
        "--backend",
        choices=("auto", "ray", "process", "serial"),
        default="auto",
        help="auto: Ray if installed, else local processes",
    )
    p.add_argument("--workers", type=positive_int(1024), help="parallel workers (default: CPU count)")
    p.add_argument("--out", type=output_dir, default="out/sweep")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..auditing import DEFAULT_ATTACK
    from ..sweep import DEFAULT_GRID, SweepPlan, expand_grid, run_sweep, write_sweep

    settings = tuple(s for g in (a.grid or DEFAULT_GRID) for s in expand_grid(g))
    plan = SweepPlan(
        scenario=scenario_from_args(a),
        settings=settings,
        clients=a.clients,
        attacks=tuple(a.attack or [DEFAULT_ATTACK]),
        iterations=a.iterations,
        train_steps=a.train_steps,
        train_batch=a.train_batch,
        train_lr=a.train_lr,
        candidates=a.candidates,
        victim_checkpoints=a.victim_checkpoints or (),
    )

    def progress(done: int, total: int) -> None:
        if not a.quiet:
            print(f"\r{done}/{total} cells", end="" if done < total else "\n", file=sys.stderr, flush=True)

    results = run_sweep(plan, backend=a.backend, workers=a.workers, on_done=progress)
    paths = write_sweep(results, a.out)
    print(Path(paths["md"]).read_text().split("Trends")[0].split("![privacy-utility](privacy_utility.png)")[1].strip())
    print(f"report: {paths['html']}")
    return 0
