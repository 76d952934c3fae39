"""Benchmark of two malicious servers that change only weights (issue 17; PAPERS.md §8, §9).

Sections (each writes into results.json; results.md summarises):
  trap     trap weights (Boenisch et al. EuroS&P 2023) in the first layer of the zoo MLP (Linear(3072, 1000) →
           ReLU → Linear(1000, 1000) → ReLU → head), one client, FedSGD; server defaults σ 0.5, s 0.95, μ 0
           (breaching's), the normalisation folded into the layer; the ``trap`` recovery with its defaults. Bundled
           photos at B = 16, 32, 64 (80 images in all), Fashion-MNIST at B = 100 (when installed) with s 0.95 and
           s 0.8; and, for contrast, the same recovery on the unmodified (randomly initialised) layer at B = 64.
           3 seeded batches per cell; the share of a batch's images recovered at PSNR ≥ 40 dB after pairing.
  fishing  feature fishing (Wen et al. ICML 2022) on the zoo MLP (width 256), photos, secure aggregation of 4
           clients × 16 distinct images (64 in all), FedSGD. Round 0: class fishing on class 0, whose update
           gives every class's count and the fished class's mean features; the server fishes the rarest class and
           cuts its largest mean feature. Then the multi-round cut search (``fish_one``, the clients' data fixed)
           at feature_weight 1e4, and the ``fishing`` recovery (Inverting Gradients at B=1, 600 iterations, TV 0
           and, for comparison, its default TV 0.2). The search at the paper's feature_weight 300 is tried too.
           3 seeds; the reconstruction is scored against all 64 images (best PSNR) and against the sample whose
           feature lies between the two cuts (ground truth, for the report only).

Run: python benchmarks/malicious/run.py [--only SECTION ...] [--check]
(--check reruns CHECK_CELLS and compares with results.json within the tolerances below; exit 1 on mismatch)
Records the machine (``gradleak.cost.machine()``); timings depend on it and on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gradleak.cost import machine
from gradleak.data import dataset_available

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
TRAP_WIDTH = 1000
TRAP_CELLS = (("photos", 16, 0.95), ("photos", 32, 0.95), ("photos", 64, 0.95))
TRAP_FASHION = (("fashion-mnist", 100, 0.95), ("fashion-mnist", 100, 0.8))
CLIENTS, CLIENT_B = 4, 16
FEATURE_WEIGHT = 1e4
PAPER_FEATURE_WEIGHT = 300.0
IG_ITERATIONS = 600
CHECK_CELLS = (("trap", "photos", 64), ("fishing", "photos", 64))  # seed 0 of each, ~10 s together
CHECK_TOL_SHARE = 0.05  # trap: share of images at ≥ 40 dB (3 of 64 images)
CHECK_TOL_DB = 3.0  # fishing: PSNR of the reconstruction, unless both are above CHECK_EXACT_DB
CHECK_EXACT_DB = 40.0  # above it the optimiser's last steps differ by rounding (thread count, load)
PAPER = (
    "Trap weights: on ImageNet with a 1000-unit trapped layer, more than half of a batch of 100 is reconstructed "
    "perfectly (Boenisch et al.). Fishing: one user's image recovered from batches of arbitrary size; the SEER "
    "README measures class fishing at D-SNR 79 (multiplier 16) on CIFAR-10 ResNet-18 at B=64. Our data, sizes and "
    "models are smaller, so these numbers sit beside the papers', not against them."
)


def log(*a) -> None:
    print(*a, flush=True)


# -------------------------------------------------------------------------------------------------- trap
def trap_run(data: str, b: int, scale: float, seed: int, *, trapped: bool = True) -> dict:
    from gradleak.attacks import TrapRecovery
    from gradleak.metrics import score_images
    from gradleak.scenario import Scenario, simulate
    from gradleak.servers.trap import TrapWeights

    server = TrapWeights(scale=scale)
    sc = Scenario(model="mlp", model_kwargs={"width": TRAP_WIDTH}, dataset=data, batch_size=b, seed=seed)
    obs, truth = simulate(replace(sc, server=server) if trapped else sc)
    if not trapped:  # the recovery's rules on the layer as initialised (no record exists: give it one)
        obs = replace(obs, server={"name": "trap", "layer": "body.1"})
    res = TrapRecovery().run(obs, generator=torch.Generator().manual_seed(seed))
    p = np.asarray(score_images(res.images, truth.images).psnr)
    a = res.assumptions
    return {
        "seed": seed,
        "share_40db": float(np.mean(p >= 40)),
        "mean_psnr": float(p.mean()),
        "exact_count": a["exact_count"],
        "rows_active": a["rows_active"],
        "rows_in_range": a["rows_in_range"],
        "seconds": res.seconds,
    }


def trap_cell(data: str, b: int, scale: float, seeds=SEEDS, *, trapped: bool = True) -> dict:
    runs = [trap_run(data, b, scale, s, trapped=trapped) for s in seeds]
    for r in runs:
        log(f"trap {data} B={b} s={scale} trapped={trapped} seed={r['seed']}: {r['share_40db']:.2f} at ≥40 dB")
    return {
        "section": "trap",
        "data": data,
        "B": b,
        "scale": scale,
        "trapped": trapped,
        "runs": runs,
        "share_40db": float(np.mean([r["share_40db"] for r in runs])),
        "min_share_40db": float(min(r["share_40db"] for r in runs)),
        "exact_share": float(np.mean([r["exact_count"] / b for r in runs])),
        "seconds": float(sum(r["seconds"] for r in runs)),
    }


def bench_trap() -> list[dict]:
    cells = [trap_cell(*c) for c in TRAP_CELLS]
    cells.append(trap_cell("photos", 64, 0.95, trapped=False))
    if dataset_available("fashion-mnist", size=32):
        cells += [trap_cell(*c) for c in TRAP_FASHION]
    else:
        log("trap: fashion-mnist is not installed; the B=100 rows are skipped")
    return cells


# ----------------------------------------------------------------------------------------------- fishing
def fishing_run(seed: int) -> dict:
    from gradleak.attacks import FishingRecovery
    from gradleak.errors import GradleakError
    from gradleak.metrics import psnr
    from gradleak.scenario import Scenario, simulate
    from gradleak.servers.fishing import Fishing, fish_one, fished_count

    base = Scenario(model="mlp", dataset="photos", batch_size=CLIENT_B, clients=CLIENTS, seed=seed)

    def query(strategy):
        return simulate(replace(base, server=strategy))[0]

    # round 0: class fishing on class 0 shows every class's count (bias rows) and class 0's mean features
    obs0 = query(Fishing(target=0))
    head, n, classes = obs0.server["head"], obs0.known_batch_size(), obs0.num_classes
    gb = obs0.update[f"{head}.bias"] * n
    counts = [fished_count(obs0)] + [n / (classes - 1) - float(gb[j]) for j in range(1, classes)]
    target = min((c, j) for j, c in enumerate(counts) if c > 0.5)[1]
    obs1 = obs0 if target == 0 else query(Fishing(target=target))
    mean = -obs1.update[f"{head}.weight"][target] * n / fished_count(obs1)
    feature = int(mean.argmax())
    _, truth = simulate(base)
    out: dict = {"seed": seed, "class_counts": [round(c, 3) for c in counts], "target": target, "feature": feature}
    out["true_counts"] = torch.bincount(truth.labels, minlength=classes).tolist()
    search = dict(target=target, feature=feature, centre=float(mean[feature]))
    try:
        fish_one(query, **search, feature_weight=PAPER_FEATURE_WEIGHT)
        out["paper_weight_isolated"] = True
    except GradleakError as e:
        out["paper_weight_isolated"] = False
        out["paper_weight_error"] = str(e)
    t0 = time.perf_counter()
    diff, rounds = fish_one(query, **search, feature_weight=FEATURE_WEIGHT)
    out["search_seconds"] = time.perf_counter() - t0
    out["rounds"] = len(rounds) + (1 if target == 0 else 2)  # with the class-fishing round(s)
    low, high = diff.server["baseline_threshold"], diff.server["threshold"]
    h = diff.model.get_submodule("body")(diff.normalization.normalize(truth.images)).detach()[:, feature]
    inside = torch.nonzero((h > low) & (h < high)).flatten().tolist()
    out["samples_between_cuts"] = inside
    out["fished_label"] = int(truth.labels[inside[0]]) if len(inside) == 1 else None
    for tv in (0.0, 0.2):
        res = FishingRecovery(iterations=IG_ITERATIONS, tv=tv).run(diff, generator=torch.Generator().manual_seed(seed))
        p = psnr(res.images.expand_as(truth.images), truth.images)
        out[f"tv{tv}"] = {
            "best_psnr": float(p.max()),
            "best_index": int(p.argmax()),
            "psnr_of_fished": float(p[inside[0]]) if len(inside) == 1 else None,
            "seconds": res.seconds,
        }
    return out


def fishing_cell(seeds=SEEDS) -> dict:
    runs = []
    for s in seeds:
        runs.append(fishing_run(s))
        r = runs[-1]
        log(
            f"fishing seed={s}: target {r['target']} feature {r['feature']} rounds {r['rounds']}, "
            f"{r['tv0.0']['psnr_of_fished']:.2f} dB (TV 0), {r['tv0.2']['psnr_of_fished']:.2f} dB (TV 0.2)"
        )
    return {
        "section": "fishing",
        "data": "photos",
        "B": CLIENTS * CLIENT_B,
        "clients": CLIENTS,
        "runs": runs,
        "min_psnr_tv0": float(min(r["tv0.0"]["psnr_of_fished"] for r in runs)),
        "mean_psnr_tv0": float(np.mean([r["tv0.0"]["psnr_of_fished"] for r in runs])),
        "mean_psnr_tv02": float(np.mean([r["tv0.2"]["psnr_of_fished"] for r in runs])),
        "seconds": float(sum(r["search_seconds"] + r["tv0.0"]["seconds"] + r["tv0.2"]["seconds"] for r in runs)),
    }


# -------------------------------------------------------------------------------------------------- check
def check(path: Path) -> int:
    sections = json.loads(path.read_text())["sections"]
    bad = 0
    old_trap = next(c for c in sections["trap"] if c["data"] == "photos" and c["B"] == 64 and c["trapped"])
    new = trap_run("photos", 64, 0.95, 0)
    old = old_trap["runs"][0]
    if abs(new["share_40db"] - old["share_40db"]) > CHECK_TOL_SHARE:
        bad += 1
        log(f"MISMATCH trap photos B=64 seed 0: {new['share_40db']:.3f} vs committed {old['share_40db']:.3f}")
    new_f, old_f = fishing_run(0), sections["fishing"][0]["runs"][0]
    same_sample = new_f["samples_between_cuts"] == old_f["samples_between_cuts"]
    a, b = (r["tv0.0"]["psnr_of_fished"] for r in (new_f, old_f))
    if not same_sample or (abs(a - b) > CHECK_TOL_DB and min(a, b) < CHECK_EXACT_DB):
        bad += 1
        log(
            f"MISMATCH fishing seed 0: sample {new_f['samples_between_cuts']} at {a:.2f} dB vs committed "
            f"{old_f['samples_between_cuts']} at {b:.2f} dB"
        )
    log(
        f"malicious check: {len(CHECK_CELLS)} cells, {bad} mismatches (tolerance {CHECK_TOL_SHARE} on the trap's "
        f"share at ≥ 40 dB; the same fished sample and {CHECK_TOL_DB} dB on its PSNR unless both ≥ {CHECK_EXACT_DB} dB)"
    )
    return 1 if bad else 0


# ----------------------------------------------------------------------------------------------- markdown
def markdown(results: dict) -> str:
    e = results["environment"]
    out = [
        "# Malicious servers that change only weights — benchmark (issue 17)",
        "",
        f"Total wall time {results['seconds']:.0f} s; {e['threads']} torch threads on {e['cpus']} CPUs, torch "
        f"{e['torch']}, OMP_WAIT_POLICY={e['omp_wait_policy']}, load average (1 min) "
        f"{e['load_average_start'][0]:.2f} → {e['load_average_end'][0]:.2f} (other jobs shared the machine).",
        "",
    ]
    trap = results["sections"].get("trap")
    if trap:
        out += [
            "## Trap weights (Boenisch et al. EuroS&P 2023)",
            "",
            f"Zoo MLP, first layer Linear(d, {TRAP_WIDTH}) with bias; server σ 0.5, μ 0 and the scale s below, the "
            "normalisation folded into the layer; `trap` recovery defaults. 3 seeded batches per cell; shares are "
            "of the batch's images (after pairing with `score_images`).",
            "",
            "| data | B | layer | s | share ≥ 40 dB (mean) | worst batch | flagged exact (share) | s per batch |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in trap:
            layer = "trapped" if c["trapped"] else "as initialised"
            out.append(
                f"| {c['data']} | {c['B']} | {layer} | {c['scale'] if c['trapped'] else '—'} | "
                f"{c['share_40db']:.2f} | {c['min_share_40db']:.2f} | {c['exact_share']:.2f} | "
                f"{c['seconds'] / len(c['runs']):.2f} |"
            )
        out += [
            "",
            "Flagged exact: samples at least two rows agree on (verified); the rest of the share comes from rule 3 "
            "of the recovery (rows the exact samples do not explain, one per residual direction). What limits "
            "the share at B=64 is the trap itself: a unit's pre-activation on pixels is about −(1 − s)·mean "
            "plus a random term ∝ the contrast, so low-contrast crops (mean/std ≈ 3: the tissue and rocket "
            "photos) fire no unit at all and high-contrast ones (≈ 1: colorwheel, coffee) fire over a hundred; "
            "the former own no row. Fashion-MNIST's dark backgrounds make the default s fire too often at B=100; s 0.8 "
            "(which the server could pick on its own data) does better but stays below half.",
            "",
        ]
    fishing = results["sections"].get("fishing")
    if fishing:
        c = fishing[0]
        out += [
            "## Fishing (Wen et al. ICML 2022)",
            "",
            f"Zoo MLP (width 256), photos, secure aggregation of {c['clients']} clients × {c['B'] // c['clients']} "
            f"(B = {c['B']}); cut search at feature_weight {FEATURE_WEIGHT:g}; Inverting Gradients at B=1, "
            f"{IG_ITERATIONS} iterations.",
            "",
            "| seed | target class (count) | feature | rounds | fished sample (class) | PSNR TV 0 (dB) | PSNR TV 0.2 "
            "(dB) | best match = fished | feature_weight 300 isolates |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in c["runs"]:
            fished = r["samples_between_cuts"]
            out.append(
                f"| {r['seed']} | {r['target']} ({r['class_counts'][r['target']]:.0f}) | {r['feature']} | "
                f"{r['rounds']} | {fished} ({r['fished_label']}) | {r['tv0.0']['psnr_of_fished']:.2f} | "
                f"{r['tv0.2']['psnr_of_fished']:.2f} | {[r['tv0.0']['best_index']] == fished} | "
                f"{r['paper_weight_isolated']} |"
            )
        out += [
            "",
            f"Worst seed {c['min_psnr_tv0']:.2f} dB (target ≥ 25 dB from an aggregate of ≥ 64 images). The "
            "difference of the aggregates at two cuts around one sample is that sample's gradient whatever its "
            "class (the count rises by one at every sample), so the fished sample is often of another class "
            "than the target. The cut is sharp within about 30 / feature_weight: the MLP's features lie in "
            "[0, ~1] and 64 samples sit about 0.015 apart, so the paper's 300 (a window of ~0.1) never "
            "isolates one sample here, and 1e4 does. TV 0.2 (Inverting Gradients' default) holds the "
            "reconstruction back on the MLP, whose single-sample gradient pins the image down.",
            "",
        ]
    out += [
        f"Paper: {PAPER}",
        "",
        "`python benchmarks/malicious/run.py --check` reruns trap photos B=64 and fishing at seed 0 and fails if the "
        f"trap's share differs by more than {CHECK_TOL_SHARE}, or fishing isolates another sample or its PSNR "
        f"differs by more than {CHECK_TOL_DB} dB (unless both are above {CHECK_EXACT_DB:g} dB, where Inverting "
        "Gradients' last steps differ by rounding: 96 and 100 dB were both seen for seed 0).",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=["trap", "fishing"])
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--check", action="store_true", help="rerun CHECK_CELLS and compare with results.json")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.check:
        return check(out / "results.json")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    results["environment"] = machine()
    t0 = time.perf_counter()
    for name in a.only:
        results["sections"][name] = bench_trap() if name == "trap" else [fishing_cell()]
        path.write_text(json.dumps(results, indent=1))
    results["seconds"] = time.perf_counter() - t0
    results["environment"]["load_average_end"] = os.getloadavg()
    results["paper"] = PAPER
    path.write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
