#!/usr/bin/env python
"""Leakage over a model's life (issue 20): label recovery and Inverting Gradients against a server model as it trains,
and per-round audits of a Flower federation.

Sections (each writes into results.json; results.md summarises):
  curves  ConvNet (width 16, 32×32) and ResNet-18 (CIFAR stem, 16×16) on the bundled photos, trained once each with
          the library's victim training (gradleak.over_training.checkpoints: seeded SGD, batch TRAIN_BATCH, lr 0.01,
          momentum 0.9, BN train mode) on the train half of every class and audited at CHECKPOINTS training steps on
          client batches drawn from the held-out half (BN eval, labels may repeat):
            labels  every label method and `auto` at B = 1, 8, 32, TRIALS client batches each (seeds 1000·B + t);
                    `auto`'s accuracy and its pick are reported beside every method, never the best method by truth
            ig      Inverting Gradients, IG_ITERATIONS iterations (a short budget), labels from `auto`, B = 1, 8, 32,
                    one client batch each (seed 1000·B)
  flower  `gradleak fl-demo`: 4 clients, 10 rounds of FedAvg (5 local steps, lr 0.1, batch 8 per client; MLP width
          64 on the bundled digits), every client audited every round (`auto` labels + Inverting Gradients,
          FL_ITERATIONS iterations); the per-round curve beside the global model's accuracy

Sizes are reduced for a shared 2-core machine: training batch 8, IG budgets of 100 iterations, 3 trials per label
cell. Each section records its own environment (torch threads, load average) beside its wall time.

Run: python benchmarks/leakage_over_training/run.py [--only curves flower] [--models convnet resnet18] [--threads N]
[--check [--record]]. ``--only curves`` reruns the curves and keeps the Flower section stored in results.json (and
vice versa). (--check reruns CHECK: the ConvNet at 0 and 100 steps, labels at B=8 and IG at B=1, and compares with
results.json, or with its record for this kind of CPU, within the tolerances CHECK_TOL; exit 1 on a mismatch.
--record stores the rerun as this CPU kind's record.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gradleak.attacks import InvertingGradients
from gradleak.auditing import AuditPlan, audit, run_labels
from gradleak.cost import CHECK_RECORDS, check_reference, cpu_kind, machine, record_check
from gradleak.over_training import checkpoints
from gradleak.report.curves import Line, Panel, plot_curves
from gradleak.scenario import Scenario, simulate

HERE = Path(__file__).resolve().parent
MODELS = {"convnet": ({"width": 16}, 32), "resnet18": ({}, 16)}
CHECKPOINTS = (0, 100, 1000, 5000)
TRAIN_BATCH = 8
LABEL_B = (1, 8, 32)
IG_B = (1, 8, 32)
TRIALS = 3
IG_ITERATIONS = 100
METHODS = (
    "idlg",
    "sum",
    "gradinversion-min",
    "min-rule-counts",
    "llg-simple",
    "llg-bias-corrected",
    "llg-whitebox",
    "ilrg",
    "ilrg-lsq",
)
AUTO = "auto"
FL = {"clients": 4, "rounds": 10, "local_steps": 5, "local_lr": 0.1, "batch": 8}
FL_ITERATIONS = 200
CHECK = {"model": "convnet", "checkpoints": (0, 100), "labels_B": 8, "ig_B": 1}
CHECK_TOL = {"accuracy": 0.03, "label_accuracy": 0.05, "psnr_db": 1.0}
THREADS_NOTE = (
    "The victims are trained on one torch thread whatever the process uses (`gradleak.victim`), so a seed gives one "
    "model at any thread count: before that, the order of floating-point sums, which the thread count sets, grew "
    "over training into different models (the same seeded ConvNet reached a held-out accuracy of 0.75 after 100 "
    "steps at 2 threads and 0.65 at 1). The attacks run at the section's thread count; `--check` reruns at 2 threads "
    "by default, so it also checks that the committed curves hold at a thread count other than theirs."
)


def log(*a: Any) -> None:
    print(*a, flush=True)


def scenario(name: str, **kw: Any) -> Scenario:
    kwargs, size = MODELS[name]
    return Scenario(model=name, model_kwargs=kwargs, image_size=size, dataset="photos", train_batch=TRAIN_BATCH, **kw)


def label_cell(cp: Any, name: str, b: int, trials: int) -> dict[str, Any]:
    """Every method and auto on ``trials`` held-out client batches of size ``b`` at one checkpoint."""
    acc: dict[str, list[float]] = {m: [] for m in (*METHODS, AUTO)}
    refused: dict[str, str] = {}
    picks = []
    for t in range(trials):
        obs, truth = simulate(scenario(name, batch_size=b, seed=1000 * b + t), cp.held_out, copy.deepcopy(cp.model))
        for run in run_labels(obs, (*METHODS, AUTO), truth).runs:
            if run.accuracy is None:
                refused[run.requested] = (run.error or "").splitlines()[-1].strip(" -")
                continue
            acc[run.requested].append(run.accuracy)
            if run.requested == AUTO:
                picks.append(run.method)
    return {
        "methods": {
            m: {"accuracy": statistics.mean(v), "min": min(v)} if v else {"refused": refused.get(m, "")}
            for m, v in acc.items()
        },
        "auto_picked": sorted(set(picks)),
    }


def ig_cell(cp: Any, name: str, b: int, iterations: int) -> dict[str, Any]:
    """Inverting Gradients (labels from auto) on one held-out client batch of size ``b``."""
    obs, truth = simulate(scenario(name, batch_size=b, seed=1000 * b), cp.held_out, copy.deepcopy(cp.model))
    plan = AuditPlan(label_methods=(AUTO,), attacks=(InvertingGradients(iterations=iterations),))
    result = audit(obs, plan, truth=truth)
    run, labels = result.attacks[0], result.labels.chosen
    return {
        "psnr": None if run.scores is None else run.scores.mean_psnr,
        "ssim": None if run.scores is None else run.scores.mean_ssim,
        "error": run.error,
        "label_method": None if labels is None else labels.method,
        "label_accuracy": None if labels is None else labels.accuracy,
        "seconds": None if run.result is None else run.result.seconds,
    }


def curves(name: str, steps: tuple[int, ...], label_bs: tuple[int, ...], ig_bs: tuple[int, ...]) -> dict[str, Any]:
    """One training of ``name``, audited at every checkpoint of ``steps``."""
    out: dict[str, Any] = {"checkpoints": []}
    t0 = time.perf_counter()
    for cp in checkpoints(scenario(name), steps):
        tc = time.perf_counter()
        row = {
            "steps": cp.steps,
            "training": cp.training.to_json(),
            "labels": {str(b): label_cell(cp, name, b, TRIALS) for b in label_bs},
            "ig": {str(b): ig_cell(cp, name, b, IG_ITERATIONS) for b in ig_bs},
        }
        row["audit_seconds"] = time.perf_counter() - tc
        out["checkpoints"].append(row)
        t = cp.training
        log(
            f"{name} {cp.steps:5d} steps (trained {t.seconds:.0f} s): train acc {t.train_accuracy:.2f}, held-out "
            f"{t.test_accuracy:.2f}; auto "
            + " ".join(
                f"B={b} {v['methods'][AUTO].get('accuracy', float('nan')):.2f}" for b, v in row["labels"].items()
            )
            + "; IG "
            + " ".join(f"B={b} {v['psnr']:.2f} dB" for b, v in row["ig"].items() if v["psnr"] is not None)
            + f" ({row['audit_seconds']:.0f} s)"
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def flower(work: Path, out: Path) -> dict[str, Any]:
    """The fl-demo run (see the module docstring) in ``work``; its per-round curve is copied into ``out``."""
    from gradleak.cli import main

    argv = [
        "fl-demo",
        "--clients",
        str(FL["clients"]),
        "--rounds",
        str(FL["rounds"]),
        "--protocol",
        "fedavg",
        "--local-steps",
        str(FL["local_steps"]),
        "--local-lr",
        str(FL["local_lr"]),
        "--batch-size",
        str(FL["batch"]),
        "--attack",
        "inverting_gradients",
        "--iterations",
        str(FL_ITERATIONS),
        "--out",
        str(work),
    ]
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"fl-demo exited {code}")
    demo = json.loads((work / "results.json").read_text())
    shutil.copy(work / "leakage_per_round.png", out / "flower_per_round.png")
    return {
        "command": "gradleak " + " ".join(a for a in argv if a != str(work)).replace("--out", "--out OUT"),
        "seconds": seconds,
        "simulation_seconds": demo["simulation_seconds"],
        "rounds": demo["rounds"],
        "evaluations": demo["evaluations"],
        "config": demo["config"],
    }


def plot_model(name: str, data: dict[str, Any], path: Path) -> None:
    rows = data["checkpoints"]

    def line(label: str, get: Any) -> Line:
        return Line(label, [(r["steps"], get(r)) for r in rows if get(r) is not None])

    panels = [
        Panel(
            "model accuracy",
            [
                line("train half", lambda r: r["training"]["train_accuracy"]),
                line("held-out half", lambda r: r["training"]["test_accuracy"]),
            ],
            ylim=(0, 1.05),
        ),
        Panel(
            "label accuracy of auto",
            [line(f"B={b}", lambda r, b=b: r["labels"][b]["methods"][AUTO].get("accuracy")) for b in rows[0]["labels"]],
            ylim=(0, 1.05),
        ),
        Panel(
            "label accuracy at B=32",
            [line(m, lambda r, m=m: r["labels"]["32"]["methods"][m].get("accuracy")) for m in (*METHODS, AUTO)]
            if "32" in rows[0]["labels"]
            else [],
            ylim=(0, 1.05),
        ),
        Panel(
            "Inverting Gradients PSNR (dB)", [line(f"B={b}", lambda r, b=b: r["ig"][b]["psnr"]) for b in rows[0]["ig"]]
        ),
        Panel("Inverting Gradients SSIM", [line(f"B={b}", lambda r, b=b: r["ig"][b]["ssim"]) for b in rows[0]["ig"]]),
    ]
    kwargs, size = MODELS[name]
    plot_curves(
        path,
        panels,
        xlabel="training steps of the server's model",
        title=f"{name} {json.dumps(kwargs) if kwargs else '(CIFAR stem)'} at {size}×{size} on photos: leakage of "
        "held-out client batches over training",
        symlog=True,
    )


def _f(x: float | None, d: int = 2) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _acc(v: dict[str, Any]) -> str:
    return _f(v["accuracy"]) if "accuracy" in v else "refused"


def markdown(results: dict[str, Any]) -> str:
    sections = {f"curves {n}": d for n, d in results.get("curves", {}).items()}
    if results.get("flower"):
        sections["flower"] = results["flower"]
    envs = {k: d["environment"] for k, d in sections.items()}
    e = next(iter(envs.values()))
    checkpoints_ = results["config"]["checkpoints"]
    out = [
        "# Leakage over a model's life (issue 20) — generated by `run.py` from `results.json`",
        "",
        f"Machine: torch {e['torch']} on {e['cpus']} CPUs, shared with other jobs (seconds are pessimistic). Each "
        "section's wall time, with the torch threads, OMP_WAIT_POLICY and load average (1 min) at the start → end of "
        "the run that made it: "
        + "; ".join(
            f"{k} **{results['seconds'][k]:.0f} s** ({v['threads']} thread{'s' * (v['threads'] > 1)}, "
            f"{v['omp_wait_policy']}, load {v['load_average_start'][0]:.2f} → {v['load_average_end'][0]:.2f})"
            for k, v in envs.items()
        )
        + ".",
        "",
        f"Victims: ConvNet width 16 at 32×32 and ResNet-18 (CIFAR stem) at 16×16 on the bundled photos (10 classes × "
        f"8 crops), each trained once with the library's victim training (`gradleak.over_training.checkpoints`: "
        f"seeded SGD, batch {TRAIN_BATCH}, lr 0.01, momentum 0.9, BatchNorm in train mode) on the train half of every "
        f"class (40 images) and audited at {', '.join(map(str, checkpoints_))} steps on client batches drawn from the "
        "other, held-out half (40 images, never trained on; BN eval; labels may repeat); the checkpoints are taken "
        "along one training per model. Sizes are reduced for the shared 2-core machine: the training batch is "
        f"{TRAIN_BATCH}, Inverting Gradients runs {IG_ITERATIONS} iterations (its audit default is 600), and label "
        f"cells hold {TRIALS} client batches.",
        "",
        THREADS_NOTE,
        "",
        "`auto` is the label method a server would run: it picks a published method from what it observes, never "
        "by the ground truth; its accuracy and pick are reported beside every method, and no column is a best-of.",
        "",
    ]
    for name, data in results.get("curves", {}).items():
        rows = data["checkpoints"]
        bs = list(rows[0]["labels"])
        igs = list(rows[0]["ig"])
        out += [
            f"## {name}",
            "",
            f"![{name}]({name}.png)",
            "",
            "| steps | train acc | held-out acc | "
            + " | ".join(f"auto B={b} (picked)" for b in bs)
            + " | "
            + " | ".join(f"IG B={b} PSNR / SSIM" for b in igs)
            + " |",
            "|---|---|---|" + "---|" * (len(bs) + len(igs)),
        ]
        for r in rows:
            t = r["training"]
            cells = [str(r["steps"]), _f(t["train_accuracy"]), _f(t["test_accuracy"])]
            for b in bs:
                c = r["labels"][b]
                cells.append(f"**{_acc(c['methods'][AUTO])}** ({'/'.join(c['auto_picked'])})")
            for b in igs:
                c = r["ig"][b]
                cells.append(f"{_f(c['psnr'])} dB / {_f(c['ssim'], 3)}")
            out.append("| " + " | ".join(cells) + " |")
        out += [
            "",
            f"Every label method (mean multiset accuracy over {TRIALS} client batches; `refused`: the method declined "
            "the observation, e.g. the min rule at B > N or iDLG at B > 1):",
            "",
            "| steps | B | " + " | ".join((AUTO, *METHODS)) + " |",
            "|---|---|" + "---|" * (len(METHODS) + 1),
        ]
        for r in rows:
            for b in bs:
                ms = r["labels"][b]["methods"]
                out.append(f"| {r['steps']} | {b} | " + " | ".join(_acc(ms[m]) for m in (AUTO, *METHODS)) + " |")
        out.append("")
    fl = results.get("flower")
    if fl:
        from gradleak.commands.fl_demo import round_table

        cfg = fl["config"]
        final = fl["evaluations"].get(str(cfg["rounds"]), {}).get("accuracy")
        out += [
            "## Flower: per-round audits",
            "",
            f"`{fl['command']}` — {cfg['clients']} clients, {cfg['rounds']} rounds of FedAvg ({cfg['local-steps']} "
            f"local steps, lr {cfg['local-lr']}, batch {cfg['batch-size']} per client), MLP width 64 on the bundled "
            f"digits at 32×32; every client audited every round (`auto` labels, Inverting Gradients "
            f"{cfg['iterations']} iterations replaying the local steps). Run time **{fl['seconds']:.0f} s** (the "
            f"simulation with its audits {fl['simulation_seconds']:.0f} s; target < 15 min). `model acc` is the "
            "accuracy, on the whole digits set (the clients' shards together), of the global model the round's "
            "clients trained" + ("." if final is None else f"; after the last round it is {final:.3f}."),
            "",
            "![per-round leakage](flower_per_round.png)",
            "",
            round_table({"config": cfg, "rounds": fl["rounds"]}),
            "",
        ]
    out += [
        f"`python benchmarks/leakage_over_training/run.py --check` retrains the {CHECK['model']} to "
        f"{max(CHECK['checkpoints'])} steps and reruns, at {' and '.join(map(str, CHECK['checkpoints']))} steps, "
        f"every label method and auto at B={CHECK['labels_B']} and Inverting Gradients at B={CHECK['ig_B']}; it fails "
        f"when a held-out accuracy differs from results.json by more than {CHECK_TOL['accuracy']}, a label accuracy by "
        f"more than {CHECK_TOL['label_accuracy']} or a PSNR by more than {CHECK_TOL['psnr_db']} dB.",
        "",
    ]
    return "\n".join(out)


def check(path: Path, record: bool = False) -> int:
    """Rerun ``CHECK`` and compare with the committed curve, or with the file's record for this kind of CPU
    (``gradleak.cost.check_reference``); ``record``: store the rerun as this CPU kind's record in the file."""
    results = json.loads(path.read_text())
    section = results["curves"][CHECK["model"]]
    committed, source = check_reference(results, section["checkpoints"])
    log(
        f"rerunning at {torch.get_num_threads()} torch thread(s) on {cpu_kind()}, against {source}; the "
        f"committed {CHECK['model']} curve ran at {section['environment']['threads']} on "
        f"{section['environment'].get('cpu_capability', 'an unrecorded CPU capability')}"
    )
    fresh = curves(CHECK["model"], CHECK["checkpoints"], (CHECK["labels_B"],), (CHECK["ig_B"],))["checkpoints"]
    bad = []
    lb, ib = str(CHECK["labels_B"]), str(CHECK["ig_B"])
    for new in fresh:
        old = next(r for r in committed if r["steps"] == new["steps"])
        where = f"{new['steps']} steps"
        if abs(new["training"]["test_accuracy"] - old["training"]["test_accuracy"]) > CHECK_TOL["accuracy"]:
            bad.append(
                f"{where}: held-out accuracy {new['training']['test_accuracy']} vs {old['training']['test_accuracy']}"
            )
        for m, v in old["labels"][lb]["methods"].items():
            got = new["labels"][lb]["methods"][m]
            if ("accuracy" in v) != ("accuracy" in got) or abs(
                v.get("accuracy", 0) - got.get("accuracy", 0)
            ) > CHECK_TOL["label_accuracy"]:
                bad.append(f"{where} B={lb} {m}: {got} vs {v}")
        p_new, p_old = new["ig"][ib]["psnr"], old["ig"][ib]["psnr"]
        if (p_new is None) != (p_old is None) or (p_new is not None and abs(p_new - p_old) > CHECK_TOL["psnr_db"]):
            bad.append(f"{where} IG B={ib}: PSNR {p_new} vs {p_old}")
    log(
        f"leakage-over-training check: {len(fresh)} checkpoints,",
        "OK" if not bad else "MISMATCH\n  " + "\n  ".join(bad),
        f"(tolerances {CHECK_TOL})",
    )
    if record:
        kind = record_check(
            results,
            [
                {
                    "steps": c["steps"],
                    "training": {"test_accuracy": c["training"]["test_accuracy"]},
                    "labels": {lb: {"methods": c["labels"][lb]["methods"]}},
                    "ig": {ib: {"psnr": c["ig"][ib]["psnr"]}},
                }
                for c in fresh
            ],
        )
        path.write_text(json.dumps(results, indent=1))
        log(f"recorded for {kind} in {path}")
        return 0
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["curves", "flower"], choices=["curves", "flower"])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--threads", type=int, default=2, help="torch threads (victims train on one)")
    p.add_argument("--check", action="store_true", help="rerun CHECK and compare with results.json")
    p.add_argument("--record", action="store_true", help="with --check: store the rerun as this CPU kind's record")
    p.add_argument("--markdown-only", action="store_true", help="rewrite results.md and the models' plots")
    a = p.parse_args(argv)
    if a.record and not a.check:
        p.error("--record needs --check")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    path = out / "results.json"
    if a.check:
        return check(path, a.record)
    if a.markdown_only:
        results = json.loads(path.read_text())
        for name, data in results["curves"].items():
            plot_model(name, data, out / f"{name}.png")
        (out / "results.md").write_text(markdown(results))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {"curves": {}, "seconds": {}}
    results["benchmark"] = "leakage over a model's life (issue 20)"
    results["config"] = {
        "models": {k: {"kwargs": v[0], "image_size": v[1]} for k, v in MODELS.items()},
        "checkpoints": CHECKPOINTS,
        "train_batch": TRAIN_BATCH,
        "label_batch_sizes": LABEL_B,
        "ig_batch_sizes": IG_B,
        "trials": TRIALS,
        "ig_iterations": IG_ITERATIONS,
        "methods": METHODS,
        "flower": FL,
        "flower_iterations": FL_ITERATIONS,
    }

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    def measured(section: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
        """``section`` with the environment it ran in (``env`` from its start, the load average at its end)."""
        return {**section, "environment": {**env, "load_average_end": os.getloadavg()}}

    if "curves" in a.only:
        if CHECK["model"] in a.models:
            results.pop(CHECK_RECORDS, None)  # the records were of the curve this run replaces
        for name in a.models:
            env = machine()
            results["curves"][name] = measured(curves(name, CHECKPOINTS, LABEL_B, IG_B), env)
            results["seconds"][f"curves {name}"] = results["curves"][name]["seconds"]
            plot_model(name, results["curves"][name], out / f"{name}.png")
            save()
    if "flower" in a.only:
        env = machine()
        with tempfile.TemporaryDirectory() as tmp:
            results["flower"] = measured(flower(Path(tmp) / "fl-demo", out), env)
        results["seconds"]["flower"] = results["flower"]["seconds"]
        save()
    (out / "results.md").write_text(markdown(results))
    log(f"done: {', '.join(f'{k} {v:.0f} s' for k, v in results['seconds'].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
