#!/usr/bin/env python
"""The cost curve of gradleak's Inverting Gradients: seconds per iteration and peak memory against batch
size and image size, for ConvNet (width 64) and ResNet-18 (CIFAR stem) — so the cost of an audit can be
predicted before it starts (issue 9).

Each (model, batch, size) runs in its own process (peak RSS is per process): gradleak's default scenario
(bundled ``photos``, BatchNorm in train mode, FedSGD, untrained seeded weights, labels given), the
attack as a user runs it with a time stamp at every iteration; s/iteration = median gap after
``--warmup`` iterations. Then, in the same process after the attack, the bare PyTorch matching step on
the same model and batch (the floor; see ``side_by_side.py``). Peak memory = ``getrusage`` max RSS of
the process, and its growth during the attack (peak at the end minus peak before the run).

From the repository root, as a module (it imports ``side_by_side``'s floor step and records):

    python -m benchmarks.performance.cost_curve     # full grid → results_cost_curve.{json,md}, cost_curve.png
    python -m benchmarks.performance.cost_curve --quick --out /tmp/cc   # B ∈ {1, 4}, 32 px, few iterations
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.performance.side_by_side import cpu_model, floor_step, peak_rss_mb  # the same floor and records

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MODELS = {"convnet": "ConvNet (width 64)", "resnet18": "ResNet-18 (CIFAR stem)"}


def worker(a: argparse.Namespace) -> dict:
    import torch

    from gradleak.attacks import ATTACKS
    from gradleak.labels import LabelResult
    from gradleak.scenario import Scenario, simulate

    torch.set_num_threads(a.threads)
    rss_imports = peak_rss_mb()
    sc = Scenario(
        model=a.model, batch_size=a.batch, image_size=a.size, unique_labels=a.batch <= 10, bn_mode=a.bn_mode, seed=0
    )
    obs, truth = simulate(sc)
    labels = LabelResult("given", [int(v) for v in truth.labels])
    stamps: list[float] = []
    n = a.warmup + a.iters + 1
    attack = ATTACKS.get("inverting_gradients")(iterations=n, log_every=1)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    attack.run(
        obs, labels, generator=torch.Generator().manual_seed(0), on_step=lambda s: stamps.append(time.perf_counter())
    )
    wall = time.perf_counter() - t0
    rss_attack = peak_rss_mb()
    gaps = [b - a_ for a_, b in zip(stamps, stamps[1:])][a.warmup :]

    # the floor on the same model and batch
    model = obs.model
    named = [(k, p) for k, p in model.named_parameters() if k in obs.update]
    params = [p for _, p in named]
    target = [obs.update[k] for k, _ in named]
    x = obs.normalization.normalize(torch.rand(a.batch, *obs.input_shape)).requires_grad_(True)
    step = floor_step(model, params, target, x, truth.labels)

    floor = []
    for i in range(a.floor_warmup + a.floor_reps):
        t = time.perf_counter()
        step()
        if i >= a.floor_warmup:
            floor.append(time.perf_counter() - t)
    s_it = statistics.median(gaps)
    return dict(
        model=a.model,
        batch=a.batch,
        size=a.size,
        bn_mode=a.bn_mode,
        iterations_timed=len(gaps),
        s_per_it=s_it,
        s_per_it_min=min(gaps),
        wall_s=wall,
        floor_s=statistics.median(floor),
        overhead_ratio=s_it / statistics.median(floor),
        peak_rss_mb=rss_attack,
        rss_growth_mb=rss_attack - rss_before,
        rss_after_imports_mb=rss_imports,
        threads=torch.get_num_threads(),
        load=list(os.getloadavg()),
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {32: "-", 64: "--"}
    colors = {"convnet": "tab:blue", "resnet18": "tab:orange"}
    for model in MODELS:
        for size in sorted({r["size"] for r in rows}):
            pts = sorted(
                (r["batch"], r["s_per_it"], r["peak_rss_mb"]) for r in rows if r["model"] == model and r["size"] == size
            )
            if not pts:
                continue
            b, s, m = zip(*pts)
            label = f"{MODELS[model]}, {size}×{size}"
            axes[0].plot(b, s, styles.get(size, ":"), marker="o", color=colors[model], label=label)
            axes[1].plot(b, m, styles.get(size, ":"), marker="o", color=colors[model], label=label)
    for ax, ylabel in zip(axes, ("seconds per iteration (median)", "peak RSS of the process (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sorted({r["batch"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        f"# gradleak cost curve{' — QUICK/SMOKE, NOT RESULTS' if res['quick'] else ''}",
        "",
        f"{res['date']}; {res['machine']['cpus']} CPUs ({res['machine']['cpu_model']}), torch "
        f"{res['machine']['torch']}, OMP_WAIT_POLICY={s['omp_wait_policy']}, {s['threads']} threads, "
        f"BN {s['bn_mode']}; load average before {res['machine']['load_before']}, after {res['load_after']}. "
        f"Inverting Gradients, {s['iters']} timed iterations after {s['warmup']} warm-up.",
        "",
        "| model | size | batch | s/iteration | floor s | overhead | peak RSS MB | RSS growth in run MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {MODELS[r['model']]} | {r['size']} | {r['batch']} | {r['s_per_it']:.3f} | "
            f"{r['floor_s']:.3f} | "
            f"{r['overhead_ratio']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="convnet,resnet18")
    p.add_argument("--batches", default="1,4,8,32")
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per point")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--floor-reps", type=int, default=3)
    p.add_argument("--floor-warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policy", choices=("default", "passive"), default="default")
    p.add_argument("--bn-mode", choices=("train", "eval"), default="train")
    p.add_argument("--quick", action="store_true", help="B ∈ {1, 4}, 32 px, 2 timed iterations; marked quick")
    p.add_argument("--out", help="folder for the outputs (default: this folder; --quick needs another)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="convnet", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        Path(a.json).write_text(json.dumps(worker(a)))
        return
    if a.quick:
        a.batches, a.sizes, a.iters, a.warmup, a.floor_reps = "1,4", "32", 2, 1, 2
    out = Path(a.out or ("/tmp/gradleak-cost-curve-quick" if a.quick else HERE))
    if a.quick and out.resolve() == HERE:
        raise SystemExit("quick outputs are not results: write them elsewhere (--out /tmp/...)")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if a.policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    import torch

    res = {
        "schema": 1,
        "quick": a.quick,
        "about": "gradleak IG cost curve (benchmarks/performance/cost_curve.py)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_before": list(os.getloadavg()),
        },
        "settings": {
            "omp_wait_policy": "PASSIVE" if a.policy == "passive" else "unset (default)",
            "threads": a.threads,
            "bn_mode": a.bn_mode,
            "iters": a.iters,
            "warmup": a.warmup,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        },
        "rows": [],
    }
    tmp = out / ".cost_curve_point.json"
    for model in a.models.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            for batch in (int(b) for b in a.batches.split(",")):
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.performance.cost_curve",
                    "--worker",
                    "--model",
                    model,
                    "--batch",
                    str(batch),
                    "--size",
                    str(size),
                    "--iters",
                    str(a.iters),
                    "--warmup",
                    str(a.warmup),
                    "--floor-reps",
                    str(a.floor_reps),
                    "--floor-warmup",
                    str(a.floor_warmup),
                    "--threads",
                    str(a.threads),
                    "--bn-mode",
                    a.bn_mode,
                    "--json",
                    str(tmp),
                ]
                t = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO))
                if proc.returncode:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
                    res["rows"].append({"model": model, "batch": batch, "size": size, "error": err})
                    print(f"{model} {size}px B={batch}: FAILED {err}", flush=True)
                    continue
                row = json.loads(tmp.read_text())
                row["process_wall_s"] = time.perf_counter() - t
                res["rows"].append(row)
                print(
                    f"{model} {size}px B={batch}: {row['s_per_it']:.3f} s/it (floor {row['floor_s']:.3f}), "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    tmp.unlink(missing_ok=True)
    res["load_after"] = list(os.getloadavg())
    ok = [r for r in res["rows"] if "error" not in r]
    (out / "results_cost_curve.json").write_text(json.dumps(res, indent=1))
    (out / "results_cost_curve.md").write_text(markdown(res))
    if ok:
        plot(
            ok,
            out / "cost_curve.png",
            f"gradleak Inverting Gradients, {res['machine']['cpus']} CPUs, {a.threads} threads, "
            f"OMP_WAIT_POLICY {res['settings']['omp_wait_policy']}{' (QUICK, not results)' if a.quick else ''}",
        )
    print(f"wrote {out / 'results_cost_curve.json'}, {out / 'results_cost_curve.md'}, {out / 'cost_curve.png'}")


if __name__ == "__main__":
    main()
