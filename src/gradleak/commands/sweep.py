"""``gradleak sweep``: defenses × strengths × attacks over several clients → JSON, plot, HTML report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    from ..sweep import DEFAULT_GRID

    p = subparsers.add_parser(
        "sweep", help="privacy–utility sweep of defenses and strengths (parallel; JSON + plot + HTML)",
        description="Attack simulated clients under each defense setting and train the same model with it; "
                    "plot leakage (attack PSNR, label accuracy) against the defended model's test accuracy.")
    p.add_argument("--grid", action="append", metavar="SPEC",
                   help="defense settings with '|' alternatives, e.g. 'dpsgd:noise=0.5|1|2,clip=1', "
                        "'noise:0.01|0.1', 'smooth:0.1|0.3', 'mixup:1' (repeatable; default: "
                        + " ".join(DEFAULT_GRID) + ")")
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=64, help="model width (mlp/convnet; default 64)")
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, default=1, help="the attacked client's batch size")
    p.add_argument("--protocol", choices=("fedsgd", "fedavg"), default="fedsgd")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--local-lr", type=float, default=1e-2)
    p.add_argument("--clients", type=int, default=4, help="simulated clients (seeds) per setting")
    p.add_argument("--attack", action="append", help="attack(s) (default inverting_gradients)")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--train-steps", type=int, default=300, help="training steps for the utility measurement")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "ray", "process", "serial"), default="auto",
                   help="auto: Ray if installed, else local processes")
    p.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    p.add_argument("--out", default="out/sweep")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..protocols import FedAvg, FedSGD
    from ..sweep import DEFAULT_GRID, SweepPlan, expand_grid, run_sweep, write_sweep

    settings = tuple(s for g in (a.grid or DEFAULT_GRID) for s in expand_grid(g))
    kwargs = {"width": a.width} if a.model in ("mlp", "convnet") else {}
    protocol = FedAvg(a.local_steps, a.local_lr) if a.protocol == "fedavg" else FedSGD()
    plan = SweepPlan(model=a.model, model_kwargs=kwargs, dataset=a.data, image_size=a.image_size,
                     batch_size=a.batch_size, protocol=protocol, settings=settings, clients=a.clients,
                     attacks=tuple(a.attack or ["inverting_gradients"]), iterations=a.iterations,
                     train_steps=a.train_steps, train_batch=a.train_batch, train_lr=a.train_lr, seed=a.seed)

    def progress(done: int, total: int) -> None:
        if not a.quiet:
            print(f"\r{done}/{total} cells", end="" if done < total else "\n", file=sys.stderr, flush=True)

    results = run_sweep(plan, backend=a.backend, workers=a.workers, on_done=progress)
    paths = write_sweep(results, a.out)
    print(Path(paths["md"]).read_text().split("Trends")[0].split("![privacy-utility](privacy_utility.png)")[1].strip())
    print(f"report: {paths['html']}")
    return 0
