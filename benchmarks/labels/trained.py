#!/usr/bin/env python
"""Label recovery on victims trained on held-out data (issue 16): every count method beside ``auto``.

Data: the bundled ``digits`` (1797 images, 10 classes) at 16×16, split by a seeded permutation into a training
half and an attack half: the victims are trained on the first, the client's batches are drawn from the second,
and the victims' accuracy on the attack half is reported as their test accuracy. Victims: ConvNet width 16 and
ResNet-18 (CIFAR stem), SGD (lr 0.01, momentum 0.9, batch 32, BatchNorm train) for ``--steps`` steps; plus the
same architectures untrained ("fresh"), where ``auto`` must keep choosing well.

Count cells: model × {fresh, trained} × BatchNorm {eval, train} × B ∈ {8, 32, 64} (loader-drawn batches,
labels may repeat), ``--trials`` seeds each; metric: multiset accuracy. ``best`` is the best method's mean
accuracy in the cell — a yardstick chosen with the ground truth, never an attack's input — and ``auto`` is what
the tool would use. Soft cells: B = 1, BatchNorm eval, trained victims, label smoothing 0.1 / 0.2, two-class
mixup (Beta(0.4, 0.4)) and one-hot controls, ``--soft-trials`` each: ``auto``'s label is exact if its soft label
(or, when it reports a hard label, that one-hot) is within 1e-3 of the target in every entry; "called soft" counts
the trials where it returned a soft label.

    python benchmarks/labels/trained.py                 # the full run (writes trained.json / trained.md)
    python benchmarks/labels/trained.py --check         # a seeded subset against trained.json (exit 1 on mismatch)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from gradleak.data import load_dataset
from gradleak.data.dataset import Dataset
from gradleak.errors import GradleakError
from gradleak.labels import LABEL_METHODS
from gradleak.metrics.labels import EXACT_TOL, label_accuracy, max_abs_error
from gradleak.protocols import cross_entropy
from gradleak.scenario import Scenario, build_scenario_model, simulate

HERE = Path(__file__).parent
METHODS = ["sum", "gradinversion-min", "llg-simple", "llg-bias-corrected", "llg-whitebox", "ilrg", "ilrg-lsq", "auto"]
MODELS = {"convnet": {"width": 16}, "resnet18": {}}
AUGMENTATIONS = {
    "ls0.1": {"label_smoothing": 0.1},
    "ls0.2": {"label_smoothing": 0.2},
    "mixup": {"mixup": 0.4},
    "one-hot": {},
}
CHECK_TOL = 0.02  # |Δ accuracy| and |Δ exact fraction| allowed by --check (thread-count rounding only)


def split_data(size: int = 16) -> tuple[Dataset, Dataset]:
    """The training half and the attack half of ``digits`` (a seeded permutation; disjoint)."""
    data = load_dataset("digits", size=size)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    half = len(data) // 2
    return data.subset(perm[:half]), data.subset(perm[half:])


def victim(name: str, init: str, steps: int, train: Dataset, test: Dataset) -> tuple[nn.Module, dict]:
    model, _ = build_scenario_model(Scenario(model=name, model_kwargs=MODELS[name], seed=0), 10, train.image_shape)
    info: dict = {"init": init}
    if init == "trained":
        t0 = time.time()
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        x = train.normalization.normalize(train.images)
        for _ in range(steps):
            idx = torch.randint(len(train), (32,), generator=g)
            opt.zero_grad()
            cross_entropy(model(x[idx]), train.labels[idx]).backward()
            opt.step()
        info.update(steps=steps, seconds=round(time.time() - t0, 1))
    model.eval()
    with torch.no_grad():
        pred = model(test.normalization.normalize(test.images)).argmax(1)
    info["test_accuracy"] = float((pred == test.labels).double().mean())
    return model, info


def count_cell(model: nn.Module, name: str, init: str, bn: str, B: int, trials: int, test: Dataset) -> dict:
    acc: dict[str, list[float]] = {m: [] for m in METHODS}
    refused: dict[str, str] = {}
    picks: list[str] = []
    t0 = time.time()
    for t in range(trials):
        sc = Scenario(model=name, model_kwargs=MODELS[name], batch_size=B, seed=1000 * B + t, bn_mode=bn)
        obs, gt = simulate(sc, dataset=test, model=copy.deepcopy(model))
        for m in METHODS:
            try:
                r = LABEL_METHODS.get(m)().recover(obs)
            except GradleakError as e:
                refused[m] = str(e).splitlines()[-1].strip(" -")
                continue
            acc[m].append(label_accuracy(gt.labels.tolist(), r.labels))
            if m == "auto":
                picks.append(r.method)
    methods = {m: statistics.mean(v) if v else None for m, v in acc.items()}
    best = max((v, m) for m, v in methods.items() if v is not None and m != "auto")
    return {
        "model": name,
        "init": init,
        "bn": bn,
        "B": B,
        "trials": trials,
        "accuracy": methods,
        "refused": {m: refused[m] for m in refused if not acc[m]},
        "best": {"method": best[1], "accuracy": best[0]},
        "auto_picked": sorted(set(picks)),
        "auto_gap": None if methods["auto"] is None else best[0] - methods["auto"],
        "seconds": round(time.time() - t0, 1),
    }


def soft_cell(model: nn.Module, name: str, aug: str, trials: int, test: Dataset) -> dict:
    exact = called_soft = 0
    worst = 0.0
    for t in range(trials):
        sc = Scenario(model=name, model_kwargs=MODELS[name], batch_size=1, seed=7000 + t, **AUGMENTATIONS[aug])
        obs, gt = simulate(sc, dataset=test, model=copy.deepcopy(model))
        r = LABEL_METHODS.get("auto")().recover(obs)
        if r.soft is not None:
            called_soft += 1
            y = r.soft
        else:
            y = torch.nn.functional.one_hot(torch.tensor(r.labels), 10).double()
        target = gt.targets if gt.targets.dim() == 2 else torch.nn.functional.one_hot(gt.targets, 10).double()
        err = max_abs_error(y, target)
        worst = max(worst, err)
        exact += err <= EXACT_TOL
    return {
        "model": name,
        "augmentation": aug,
        "trials": trials,
        "exact": exact,
        "called_soft": called_soft,
        "worst_error": worst,
    }


def run(args, save=lambda out: None) -> dict:
    torch.set_num_threads(args.threads)
    train, test = split_data()
    out: dict = {
        "config": {
            "steps": args.steps,
            "trials": args.trials,
            "soft_trials": args.soft_trials,
            "threads": args.threads,
            "split": f"digits 16×16: {len(train)} train / {len(test)} attack",
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        },
        "victims": {},
        "count_cells": [],
        "soft_cells": [],
    }
    t_start = time.time()
    for name in args.models:
        for init in args.inits:
            model, info = victim(name, init, args.steps[name], train, test)
            out["victims"][f"{name}-{init}"] = info
            print(f"{name} {init}: test accuracy {info['test_accuracy']:.3f}", flush=True)
            for bn in args.bn:
                for B in args.batch_sizes:
                    c = count_cell(model, name, init, bn, B, args.trials, test)
                    out["count_cells"].append(c)
                    save(out)
                    print(
                        f"  bn={bn} B={B} best {c['best']['method']}={c['best']['accuracy']:.3f} "
                        f"auto={c['accuracy']['auto']:.3f} ({','.join(c['auto_picked'])}) {c['seconds']:.0f}s",
                        flush=True,
                    )
            if init == "trained" and args.soft_trials:
                for aug in AUGMENTATIONS:
                    s = soft_cell(model, name, aug, args.soft_trials, test)
                    out["soft_cells"].append(s)
                    save(out)
                    print(f"  B=1 {aug}: exact {s['exact']}/{s['trials']}, called soft {s['called_soft']}", flush=True)
    out["wall_seconds"] = round(time.time() - t_start, 1)
    return out


def write_markdown(out: dict, path: Path) -> None:
    c = out["config"]
    L = [
        "# Labels on victims trained on held-out data — generated by `trained.py` from `trained.json`",
        "",
        f"Data: {c['split']} (disjoint). Victims: ConvNet width 16 ({c['steps']['convnet']} steps) and ResNet-18 "
        f"CIFAR stem ({c['steps']['resnet18']} steps), SGD lr 0.01, momentum 0.9, batch 32; fresh = untrained. "
        f"{c['trials']} trials per count cell, {c['soft_trials']} per soft cell; {c['threads']} threads on a shared "
        f"2-core machine, {out['wall_seconds']:.0f} s in all.",
        "",
        "Test accuracy on the attack half: "
        + "; ".join(f"{k} {v['test_accuracy']:.3f}" for k, v in out["victims"].items()),
        "",
        "## Counts (multiset accuracy; `best` = the best method by truth, a yardstick only)",
        "",
        "| model | init | BN | B | " + " | ".join(METHODS) + " | best | auto − best | auto ran |",
        "|---|---|---|---|" + "---|" * len(METHODS) + "---|---|---|",
    ]
    for x in out["count_cells"]:
        accs = " | ".join("refused" if x["accuracy"][m] is None else f"{x['accuracy'][m]:.3f}" for m in METHODS)
        gap = x["auto_gap"]
        mark = "" if gap is not None and gap <= 0.02 else " ✗"
        L.append(
            f"| {x['model']} | {x['init']} | {x['bn']} | {x['B']} | {accs} | {x['best']['accuracy']:.3f} "
            f"({x['best']['method']}) | {-gap:+.3f}{mark} | {', '.join(x['auto_picked'])} |"
        )
    met = sum(1 for x in out["count_cells"] if x["auto_gap"] is not None and x["auto_gap"] <= 0.02)
    L += ["", f"`auto` within 0.02 of the best method: **{met}/{len(out['count_cells'])} cells** (✗ marks a miss).", ""]
    if out["soft_cells"]:
        L += [
            "## B = 1: `auto` on augmented and one-hot labels (trained victims, BN eval)",
            "",
            "| model | labels | exact (≤ 1e-3) | called soft | worst error |",
            "|---|---|---|---|---|",
        ]
        for s in out["soft_cells"]:
            L.append(
                f"| {s['model']} | {s['augmentation']} | {s['exact']}/{s['trials']} | {s['called_soft']} | "
                f"{s['worst_error']:.1e} |"
            )
        aug = [s for s in out["soft_cells"] if s["augmentation"] != "one-hot"]
        hard = [s for s in out["soft_cells"] if s["augmentation"] == "one-hot"]
        L += [
            "",
            f"Augmented: **{sum(s['exact'] for s in aug)}/{sum(s['trials'] for s in aug)} exact**, "
            f"{sum(s['trials'] - s['called_soft'] for s in aug)} not called soft; one-hot: "
            f"**{sum(s['called_soft'] for s in hard)}/{sum(s['trials'] for s in hard)} called soft**.",
            "",
        ]
    path.write_text("\n".join(L))


def check(args) -> int:
    """Rerun the fresh ConvNet cells at B = 8 (both BN modes, 2 trials) and ConvNet soft cells (5 trials) and
    compare with trained.json: |Δ| ≤ CHECK_TOL per method and per exact fraction."""
    ref = json.loads((HERE / "trained.json").read_text())
    train, test = split_data()
    bad = []
    model, _ = victim("convnet", "fresh", 0, train, test)
    for bn in ("eval", "train"):
        got = count_cell(model, "convnet", "fresh", bn, 8, ref["config"]["trials"], test)
        want = next(
            c for c in ref["count_cells"] if (c["model"], c["init"], c["bn"], c["B"]) == ("convnet", "fresh", bn, 8)
        )
        for m in METHODS:
            a, b = got["accuracy"][m], want["accuracy"][m]
            if (a is None) != (b is None) or (a is not None and abs(a - b) > CHECK_TOL):
                bad.append(f"convnet fresh bn={bn} B=8 {m}: {a} vs committed {b}")
    print(f"--check: {len(bad)} mismatches (tolerance {CHECK_TOL})")
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--soft-trials", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--inits", nargs="+", default=["fresh", "trained"])
    ap.add_argument("--bn", nargs="+", default=["eval", "train"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 64])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--check", action="store_true", help="rerun a seeded subset and compare with trained.json")
    ap.add_argument("--merge", nargs="+", type=Path, help="merge trained.json files of runs split by --models")
    args = ap.parse_args(argv)
    args.steps = {"convnet": 200, "resnet18": 100}
    if args.check:
        torch.set_num_threads(args.threads)
        return check(args)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        out = {**parts[0], "wall_seconds": max(p["wall_seconds"] for p in parts)}
        for key in ("victims", "count_cells", "soft_cells"):
            out[key] = (
                {k: v for p in parts for k, v in p[key].items()}
                if key == "victims"
                else sum((p[key] for p in parts), [])
            )
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        out = run(
            args, save=lambda o: (args.out / "trained.json").write_text(json.dumps({**o, "wall_seconds": 0}, indent=1))
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trained.json").write_text(json.dumps(out, indent=1))
    write_markdown(out, args.out / "trained.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
