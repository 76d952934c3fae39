"""Benchmark of the Cocktail Party Attack (Kariyappa et al. ICML 2023; issue 18).

MLP (flatten → Linear(d, 512) → ReLU → Linear(512, 512) → ReLU → head) at its seeded initialisation, 32×32 inputs,
the attack with its defaults (FastICA, ``exp`` contrast on image differences, 200 iterations, scale and sign
from the bias gradient). Every cell is the mean over 3 seeded batches; images in a batch are distinct. On every
observation gradleak's ``cocktail-spear`` (ICA-seeded SPEAR, not either paper's method) runs as well, with its
defaults; its columns sit beside the paper's attack, never merged into them.

Sections (each writes into results.json; results.md summarises):
  curve    mean PSNR vs batch size: bundled photos (80 images) for B = 16–64, Fashion-MNIST (10000 images,
           the ``fashion-mnist`` dataset, when installed) for B = 128 and 256
  secagg   secure aggregation: the mean of 4 clients' FedSGD gradients, each client with 16 distinct photos
           (64 distinct in all); the attack sees one observation with batch_size 64
  fedavg   FedAvg deltas, K=5 local full-batch SGD steps (lr 0.1), photos, B = 16

Run: python benchmarks/cocktail/run.py [--only SECTION ...] [--check]
(--check reruns CHECK_CELLS and compares each mean PSNR with results.json within CHECK_TOL_DB; exit 1 on mismatch)
Records the thread count, OMP wait policy and load average; timings depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gradleak.cost import machine
from gradleak.data import dataset_available

HERE = Path(__file__).resolve().parent
WIDTH = 512
SEEDS = (0, 1, 2)
PHOTOS_B = (16, 32, 64)
FASHION_B = (128, 256)
CLIENTS = 4
CHECK_CELLS = (("curve", "photos", 16), ("fedavg", "photos", 16))  # < 1 min together
CHECK_TOL_DB = 0.5
VARIANT = "cocktail-spear"  # gradleak's ICA-seeded SPEAR, run on every observation beside the paper's attack
PAPER = (
    "The paper reports LPIPS and feature-level similarity, not PSNR: on its FC-2 network with Tiny-ImageNet at "
    "B=32 the full objective reaches LPIPS 0.081 (appendix ablation), and it reports recoveries up to B=1024 "
    "(ImageNet-sized inputs). Our numbers are PSNR on other data and a smaller input (32×32), so they sit "
    "beside the paper's, not against them."
)


def log(*a) -> None:
    print(*a, flush=True)


def variant_batch(obs, truth_images: torch.Tensor, seed: int) -> dict:
    """One run of ``cocktail-spear`` (gradleak's ICA-seeded SPEAR) on the same observation."""
    from gradleak.attacks import ATTACKS
    from gradleak.metrics import score_images

    res = ATTACKS.get(VARIANT)().run(obs, generator=torch.Generator().manual_seed(seed))
    psnr = np.asarray(score_images(res.images, truth_images).psnr)
    return {
        "mean_psnr": float(np.mean(psnr)),
        "frac_over_60db": float(np.mean(psnr >= 60)),
        "flagged_exact": int(res.assumptions["exact_count"]),
        "directions_per_pass": res.assumptions["directions_per_pass"],
        "seconds": res.seconds,
    }


def attack_batch(obs, truth_images: torch.Tensor, seed: int) -> dict:
    """One run of the attack on one observation, scored against the true images, and the variant's run."""
    from gradleak.attacks import ATTACKS
    from gradleak.metrics import score_images

    res = ATTACKS.get("cocktail")().run(obs, generator=torch.Generator().manual_seed(seed))
    s = score_images(res.images, truth_images)
    kurt = res.assumptions["kurtosis"]
    return {
        VARIANT: variant_batch(obs, truth_images, seed),
        "seed": seed,
        "mean_psnr": float(np.mean(s.psnr)),
        "median_psnr": float(np.median(s.psnr)),
        "frac_over_20db": float(np.mean(np.asarray(s.psnr) > 20)),
        "mean_ssim": float(np.mean(s.ssim)),
        "ica_iterations": res.assumptions["iterations"],
        "converged": res.assumptions["converged"],
        "mixing_condition": res.assumptions["mixing_condition"],
        "median_kurtosis": float(np.median(kurt)),
        "seconds": res.seconds,
    }


def single_client(data: str, b: int, seed: int, protocol=None) -> dict:
    from gradleak.protocols import FedSGD
    from gradleak.scenario import Scenario, simulate

    sc = Scenario(
        model="mlp", model_kwargs={"width": WIDTH}, dataset=data, batch_size=b, seed=seed, protocol=protocol or FedSGD()
    )
    obs, truth = simulate(sc)
    return attack_batch(obs, truth.images, seed)


def aggregated(b_client: int, seed: int) -> dict:
    """Secure aggregation: the mean of CLIENTS FedSGD gradients of one server model, distinct images."""
    from gradleak.client import client_round
    from gradleak.data import load_dataset
    from gradleak.observation import Observation
    from gradleak.protocols import FedSGD
    from gradleak.scenario import Scenario, build_scenario_model

    data = load_dataset("photos", size=32)
    sc = Scenario(model="mlp", model_kwargs={"width": WIDTH}, dataset="photos", seed=seed)
    model, spec = build_scenario_model(sc, data.num_classes, data.image_shape)
    images, labels = data.sample(CLIENTS * b_client, generator=torch.Generator().manual_seed(seed))
    updates = []
    for c in range(CLIENTS):
        part = slice(c * b_client, (c + 1) * b_client)
        u, _ = client_round(
            model,
            FedSGD(),
            data.normalization.normalize(images[part]),
            labels[part],
            generator=torch.Generator().manual_seed(1000 * seed + c),
        )
        updates.append(u)
    mean = {k: torch.stack([u[k] for u in updates]).mean(0) for k in updates[0]}
    obs = Observation(
        model=model,
        update=mean,
        num_classes=data.num_classes,
        input_shape=data.image_shape,
        batch_size=CLIENTS * b_client,
        normalization=data.normalization,
        model_spec=spec,
    )
    return attack_batch(obs, images, seed)


def cell(section: str, data: str, b: int, seeds=SEEDS) -> dict:
    from gradleak.protocols import FedAvg

    runs = []
    for seed in seeds:
        if section == "secagg":
            runs.append(aggregated(b // CLIENTS, seed))
        elif section == "fedavg":
            runs.append(single_client(data, b, seed, FedAvg(local_steps=5, local_lr=0.1)))
        else:
            runs.append(single_client(data, b, seed))
        r = runs[-1]
        log(f"{section} {data} B={b} seed={seed}: mean PSNR {r['mean_psnr']:.2f} dB ({r['seconds']:.0f} s)")
    return {
        "section": section,
        "data": data,
        "B": b,
        "runs": runs,
        "mean_psnr": float(np.mean([r["mean_psnr"] for r in runs])),
        "min_batch_psnr": float(min(r["mean_psnr"] for r in runs)),
        "frac_over_20db": float(np.mean([r["frac_over_20db"] for r in runs])),
        "seconds": float(sum(r["seconds"] for r in runs)),
        VARIANT: {
            "mean_psnr": float(np.mean([r[VARIANT]["mean_psnr"] for r in runs])),
            "min_batch_psnr": float(min(r[VARIANT]["mean_psnr"] for r in runs)),
            "frac_over_60db": float(np.mean([r[VARIANT]["frac_over_60db"] for r in runs])),
            "flagged_exact": int(sum(r[VARIANT]["flagged_exact"] for r in runs)),
            "seconds": float(sum(r[VARIANT]["seconds"] for r in runs)),
            "max_seconds": float(max(r[VARIANT]["seconds"] for r in runs)),
        },
    }


def bench(section: str) -> list[dict]:
    if section == "curve":
        cells = [cell("curve", "photos", b) for b in PHOTOS_B]
        if dataset_available("fashion-mnist", size=32):
            cells += [cell("curve", "fashion-mnist", b) for b in FASHION_B]
        else:
            log("curve: fashion-mnist is not installed; the B > 64 rows are skipped")
        return cells
    if section == "secagg":
        return [cell("secagg", "photos", CLIENTS * 16)]
    return [cell("fedavg", "photos", 16)]


def check(path: Path) -> int:
    sections = json.loads(path.read_text())["sections"].values()
    committed = {(c["section"], c["data"], c["B"]): c for cells in sections for c in cells}
    bad = 0
    for key in CHECK_CELLS:
        new, old = cell(*key), committed[key]
        for what, n, o in (("cocktail", new, old), (VARIANT, new[VARIANT], old[VARIANT])):
            if abs(n["mean_psnr"] - o["mean_psnr"]) > CHECK_TOL_DB:
                bad += 1
                log(f"MISMATCH {key} {what}: {n['mean_psnr']:.3f} dB vs committed {o['mean_psnr']:.3f}")
    log(f"cocktail check: {len(CHECK_CELLS)} cells, {bad} mismatches (tolerance {CHECK_TOL_DB} dB on the mean PSNR)")
    return 1 if bad else 0


def markdown(results: dict) -> str:
    e = results["environment"]
    out = [
        "# Cocktail Party Attack — benchmark (issue 18)",
        "",
        f"Total wall time {results['seconds']:.0f} s; {e['threads']} torch threads on {e['cpus']} CPUs, "
        f"OMP_WAIT_POLICY={e['omp_wait_policy']}, load average (1 min) {e['load_average_start'][0]:.2f} → "
        f"{e['load_average_end'][0]:.2f} (other jobs shared the machine).",
        "",
        f"MLP, first layer Linear(d, {WIDTH}) with bias, seeded initialisation, 32×32 inputs; attack defaults "
        "(FastICA `exp` on image differences, 200 iterations, scale and sign from the bias gradient). PSNR is "
        "after pairing reconstructions with the true images (`score_images`); each cell is 3 seeded batches.",
        "",
        "| section | data | B | mean PSNR (dB) | worst batch (dB) | share of images > 20 dB | ICA converged | s "
        f"| {VARIANT} mean PSNR (dB) | worst batch (dB) | share ≥ 60 dB | flagged exact | s (slowest batch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in results["sections"].items():
        for c in cells:
            conv = sum(r["converged"] for r in c["runs"])
            v = c[VARIANT]
            out.append(
                f"| {name} | {c['data']} | {c['B']} | {c['mean_psnr']:.2f} | {c['min_batch_psnr']:.2f} | "
                f"{c['frac_over_20db']:.2f} | {conv}/{len(c['runs'])} | {c['seconds']:.0f} | {v['mean_psnr']:.2f} | "
                f"{v['min_batch_psnr']:.2f} | {v['frac_over_60db']:.2f} | "
                f"{v['flagged_exact']}/{c['B'] * len(c['runs'])} | {v['seconds']:.0f} ({v['max_seconds']:.0f}) |"
            )
    out += [
        "",
        "secagg: the mean of 4 clients' FedSGD gradients (16 distinct photos each, 64 in all) of one server "
        "model; fedavg: each client's delta after K=5 full-batch local SGD steps (lr 0.1). For B > 64 the "
        "curve uses Fashion-MNIST (the bundled photos have 80 images; digits at 32 px have rank ≤ 64, faces "
        "200 images).",
        "",
        "The issue's target (mean PSNR ≥ 25 dB at B=64 on photos) is not met by the paper's attack: the photos are 8 "
        "crops of each of 10 pictures, so a batch of 64 holds several crops of every picture, which are not "
        "independent sources; Fashion-MNIST images of one kind (dark background, similar outlines) separate worse "
        "still at B ≥ 128. Aggregating 4 clients costs nothing beyond the larger B (secagg ≈ curve at B=64), and "
        "FedAvg's delta is a mixture of the same inputs (fedavg ≈ curve at B=16).",
        "",
        f"`{VARIANT}` (gradleak's ICA-seeded SPEAR: the ICA estimates propose each sample's ReLU zeros, SPEAR's "
        "null-space step makes them exact; not either paper's method) meets it on every photo batch: each image of "
        "each batch at ≥ 60 dB (PSNR 100 dB is the cap for identical images), flagged exact by SPEAR's ReLU-pattern "
        "evidence without the ground truth, under secure aggregation and for FedAvg deltas too. On Fashion-MNIST at "
        "B = 128 and 256 the ICA estimates are too far from the inputs for a single direction; it then stops after a "
        "second ICA and returns the ICA estimates, flagged not exact (its PSNR equals the paper's attack's).",
        "",
        f"Paper: {PAPER}",
        "",
        f"`python benchmarks/cocktail/run.py --check` reruns {', '.join(f'{s} {d} B={b}' for s, d, b in CHECK_CELLS)} "
        f"(3 seeds each) and fails if a mean PSNR differs from results.json by more than {CHECK_TOL_DB} dB.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=["curve", "secagg", "fedavg"])
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
        results["sections"][name] = bench(name)
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
