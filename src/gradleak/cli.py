"""The command line — thin: parse → build objects → run → report.

User errors (:class:`~gradleak.errors.GradleakError`) print one message and exit 2; anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import GradleakError, InputError


def _scenario_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenario (the simulated client round)")
    g.add_argument("--model", default="convnet", help="zoo name (see `gradleak list`) or module:factory")
    g.add_argument("--weights", help="model weights (.safetensors)")
    g.add_argument("--head", help="module path of the classification head, for your own models")
    g.add_argument("--data", default="photos", help="bundled dataset name or a path to your data")
    g.add_argument("--image-size", type=int, help="resize images to this many pixels (default: the dataset's)")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--repeat-labels", action="store_true", help="allow repeated labels in the batch")
    g.add_argument("--protocol", choices=("fedsgd", "fedavg"), default="fedsgd")
    g.add_argument("--local-steps", type=int, default=5, help="FedAvg local SGD steps")
    g.add_argument("--local-lr", type=float, default=1e-2, help="FedAvg local learning rate")
    g.add_argument("--local-batch", type=int, help="FedAvg local mini-batch size (default: whole batch)")
    g.add_argument("--assume-local-steps", type=int, help="what the attacker assumes, if not the true value")
    g.add_argument("--assume-local-lr", type=float, help="what the attacker assumes, if not the true value")
    g.add_argument("--assume-local-batch", type=int, help="what the attacker assumes, if not the true value")
    g.add_argument("--defense", action="append", default=[], metavar="SPEC",
                   help="e.g. clip:4, noise:0.01, laplace:0.01, sparsify:0.9, quantize:8 (repeatable, in order)")
    g.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS")
    g.add_argument("--mixup", type=float, metavar="ALPHA", help="client trains with mixup Beta(ALPHA, ALPHA)")
    g.add_argument("--bn-mode", choices=("train", "eval"), default="eval",
                   help="BatchNorm of the client: eval = the running statistics the server sent (default); "
                        "train = batch statistics (for one image they hide its brightness and contrast)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="only 'cpu' is supported in this version")


def build_scenario(a: argparse.Namespace):
    from .defenses import parse_defense
    from .protocols import FedAvg, FedSGD
    from .scenario import Scenario

    if a.device != "cpu":
        raise InputError(f"device {a.device!r} is not supported yet; use --device cpu")
    protocol = (FedAvg(a.local_steps, a.local_lr, a.local_batch) if a.protocol == "fedavg" else FedSGD())
    assumed = None
    guesses = (a.assume_local_steps, a.assume_local_lr, a.assume_local_batch)
    if any(v is not None for v in guesses):
        if a.protocol != "fedavg":
            raise InputError("--assume-local-* only apply with --protocol fedavg")
        steps, lr, batch = guesses
        assumed = FedAvg(steps or a.local_steps, lr or a.local_lr, batch if batch is not None else a.local_batch)
    return Scenario(model=a.model, weights=a.weights, head=a.head, dataset=a.data, image_size=a.image_size,
                    batch_size=a.batch_size, unique_labels=not a.repeat_labels, protocol=protocol,
                    defenses=tuple(parse_defense(s) for s in a.defense), label_smoothing=a.label_smoothing,
                    mixup=a.mixup, bn_mode=a.bn_mode, seed=a.seed, assumed_protocol=assumed)


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(name: str, index: int):
        bar = None

        def on_step(step) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(desc=name, total=step.total, unit="it", leave=True, dynamic_ncols=True)
            bar.total = step.total
            bar.n = step.iteration
            bar.set_postfix_str(f"loss {step.loss:.4g}{' ' + step.stage if step.stage else ''}", refresh=False)
            bar.refresh()
            if step.iteration >= step.total:
                bar.close()

        return on_step

    return factory


def _print_estimates(estimates) -> None:
    if estimates:
        total = sum(e.seconds for e in estimates)
        print(f"estimated cost on this machine (≈ {total / 60:.1f} min in all):", file=sys.stderr)
        for e in estimates:
            print(f"  {e.describe()}", file=sys.stderr)


def cmd_audit(a: argparse.Namespace) -> int:
    from .audit import AuditPlan, run_audit

    plan = AuditPlan(scenario=build_scenario(a), label_methods=tuple(a.label_method or ["auto"]),
                     attacks=tuple(a.attack or ["inverting_gradients"]),
                     attack_overrides={"iterations": a.iterations, "restarts": a.restarts, "prior": a.prior},
                     lpips_weights=a.lpips_weights, checkpoint_dir=a.checkpoint_dir)
    results = run_audit(plan, a.out, progress=_progress(not a.quiet), on_estimate=None if a.quiet else _print_estimates)
    print(f"verdict: {results['verdict']['level']} — {results['verdict']['summary']}")
    for att in results["attacks"]:
        if att.get("error"):
            print(f"  {att['name']}: failed — {att['error']}")
        else:
            print(f"  {att['name']}: PSNR {att['mean_psnr']:.2f} dB, SSIM {att['mean_ssim']:.3f}, "
                  f"{att['iterations']} iterations in {att['seconds']:.0f} s")
    print(f"report: {Path(a.out) / 'report.html'}")
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    from .audit import run_label_audit
    from .report import write_json_atomic

    res = run_label_audit(build_scenario(a), a.method or ["auto"])
    sec = res["labels"]
    print(f"true labels: {sec['true']}")
    print(f"{'method':<22} {'accuracy':>8} {'seconds':>9}  recovered / error")
    for name, m in sec["methods"].items():
        acc = "-" if m["label_accuracy"] is None else f"{m['label_accuracy']:.3f}"
        sec_ = "-" if m["seconds"] is None else f"{m['seconds']:.4f}"
        print(f"{name:<22} {acc:>8} {sec_:>9}  {m['error'] or m['recovered']}")
    if a.out:
        write_json_atomic(Path(a.out) / "results.json", res)
    failed = {n: m["error"] for n, m in sec["methods"].items() if m["error"]}
    for name, err in failed.items():
        print(f"gradleak: error: {err}", file=sys.stderr)
    return 2 if failed else 0


def cmd_list(a: argparse.Namespace) -> int:
    from .attacks import ATTACKS
    from .data import DATASETS
    from .defenses import DEFENSES
    from .labels import LABEL_METHODS
    from .models import MODELS

    table: dict[str, Any] = {
        "attacks": {n: c.paper for n, c in ATTACKS.items()},
        "label methods": {n: c.paper for n, c in LABEL_METHODS.items()},
        "defenses": {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in DEFENSES.items()},
        "models": {n: "" for n in MODELS.names()},
        "datasets": {n: "" for n in DATASETS.names()},
    }
    if a.json:
        print(json.dumps(table, indent=2))
        return 0
    for section, items in table.items():
        print(f"{section}:")
        for name, desc in items.items():
            print(f"  {name:<22} {desc}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradleak", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    au = sub.add_parser("audit", help="simulate a client round, recover labels and images, write a report")
    _scenario_args(au)
    au.add_argument("--attack", action="append", help="attack to run (repeatable; default inverting_gradients)")
    au.add_argument("--label-method", action="append", help="label method(s); the first that works feeds the attacks")
    au.add_argument("--iterations", type=int, help="override each attack's iteration budget")
    au.add_argument("--restarts", type=int, help="override each attack's restarts")
    au.add_argument("--prior", help="generative prior (.safetensors from `gradleak train-prior`) for ggl and gifd")
    au.add_argument("--lpips-weights", help="LPIPS weights (.safetensors); without them LPIPS is not reported")
    au.add_argument("--checkpoint-dir", help="checkpoint long attacks here; a rerun with the same settings resumes")
    au.add_argument("--out", default="out/audit", help="output folder (default out/audit)")
    au.add_argument("--quiet", action="store_true", help="no progress bars")
    au.set_defaults(func=cmd_audit)

    la = sub.add_parser("labels", help="label recovery only (fast)")
    _scenario_args(la)
    la.add_argument("--method", action="append", help="label method (repeatable; default auto)")
    la.add_argument("--out", help="also write OUT/results.json")
    la.set_defaults(func=cmd_labels)

    li = sub.add_parser("list", help="attacks, label methods, defenses, models and datasets")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)

    import importlib
    import pkgutil

    from . import commands
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except GradleakError as e:
        print(f"gradleak: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
