"""Benchmark: Inverting Gradients vs GGL (CMA-ES) vs its Adam variant vs GIFD, in and out of the prior's distribution.

Setup (CPU-sized; the papers use 64 px and full ResNet-18):
- victim model: ResNet-18 topology (CIFAR stem, BasicBlocks 2-2-2-2) at base width 16 instead of 64
  (0.7 M parameters instead of 11 M), random initialisation (seed 0), BatchNorm in eval mode, FedSGD;
- images 16×16 grey; prior: the class-conditional DCGAN of ``gradleak train-prior`` trained on the first
  9000 Fashion-MNIST test images (``prior.safetensors`` here; retrained if missing);
- in-distribution victims: Fashion-MNIST images 9000+ (never seen by the prior);
  out-of-distribution victims: LFW faces (``faces``; the prior never saw a face);
- batch 1 (5 images) and batch 4 (2 batches = 8 images); the same victims for every row;
- defenses: none; Gaussian noise σ = 0.1 × max|g| of the clean update (the "gradient scale");
  clipping to half the clean update's norm; top-10 % sparsification (90 % zeroed) per tensor;
- same budget per row in gradient queries (one evaluation of the model's gradient at a candidate):
  ``--steps`` per restart × ``--restarts`` restarts for IG, ``latent_adam`` and GIFD (each Adam step
  also differentiates through that gradient); GGL spends the same number as CMA-ES candidates,
  ``GGL_POPULATION`` a round (10 rounds of 10 at the defaults); labels recovered once per update
  (iDLG for B=1, the sum rule for B=4 with distinct Fashion-MNIST classes, ``auto`` — a count method —
  for B=4 faces, whose labels repeat) and shared by every attack;
- ablation on in/1/none only: GIFD's l1 radius ×0.25 and ×4, GGL at ten times the budget (20 rounds
  of 50, the official population).

Run: ``python benchmarks/generative/run.py`` (runs already recorded in ``results.json`` keep their
numbers; ``--only in/1/none,ood/4/noise`` runs chosen cells, and ``noise0.01`` rows — σ = 0.01·max|g| —
only when named there). ``--check`` reruns in/1/none's first update for GGL, ``latent_adam`` and GIFD
and exits 1 if a PSNR differs from ``results.json`` by more than ``CHECK_TOLERANCE`` dB. Timings depend
on the machine's load; the quality numbers do not (seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.attacks.generative.gifd import PAPER_RADIUS
from gradleak.data import Dataset, load_dataset
from gradleak.defenses import Clip, GaussianNoise, Sparsify
from gradleak.labels import recover_labels
from gradleak.metrics import score_images
from gradleak.models.zoo import BasicBlock
from gradleak.observation import update_norm
from gradleak.prior import GeneratorConfig, load_prior, save_prior
from gradleak.prior.train import TrainConfig, train_prior
from gradleak.report import save_grid
from gradleak.scenario import Scenario, simulate

HERE = Path(__file__).resolve().parent
SIZE = 16
HOLDOUT = 1000
ATTACK_NAMES = ("inverting_gradients", "ggl", "latent_adam", "gifd")
GGL_POPULATION = 10
ABLATION_CELL = "in/1/none"
ABLATION = {  # column -> (attack, settings beyond the row's budget)
    "gifd_radius_x0.25": ("gifd", {"radius": tuple(0.25 * r for r in PAPER_RADIUS)}),
    "gifd_radius_x4": ("gifd", {"radius": tuple(4 * r for r in PAPER_RADIUS)}),
    "ggl_budget_x10": ("ggl", {"population": 50, "budget_factor": 10}),
}
CHECK_COLUMNS = ("ggl", "latent_adam", "gifd")
CHECK_TOLERANCE = 0.1  # dB of PSNR: the check's runs are seeded; what remains is floating-point order
PAPER = {
    "ggl": "GGL paper Table 3 (CelebA 32 px, ResNet-18, B=1): +8.0 / -1.5 / +7.3 / +5.5 dB over IG "
    "under noise 0.1 / clip 4 / 90 % sparsify / Soteria; no undefended row",
    "gifd": "GIFD paper: ahead of GGL, GIAS and IG on PSNR/SSIM/LPIPS (FFHQ, ImageNet 64 px), with and "
    "without defenses (exact numbers not available to us)",
}
DEFENSES = ("none", "noise", "clip", "sparsify")
EXTRA_DEFENSES = ("noise0.01",)  # opt-in (--only): a tenfold weaker noise, sigma = 0.01 * max|g_clean|


class ThinResNet18(nn.Module):
    """ResNet-18 topology (CIFAR stem) at base width ``width`` (the zoo's ``resnet18`` is width 64)."""

    head_name = "fc"

    def __init__(self, num_classes: int, input_shape, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks, cin = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                blocks.append(BasicBlock(cin, planes, stride=2 if (j == 0 and i > 0) else 1))
                cin = planes
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.layers(self.relu(self.bn1(self.conv1(x))))).flatten(1))


def get_prior(path: Path, steps: int) -> None:
    if path.exists():
        return
    print(f"training the prior ({steps} steps) -> {path}", flush=True)
    data = load_dataset("fashion-mnist", size=SIZE)
    data = data.subset(list(range(len(data) - HOLDOUT)))
    gcfg = GeneratorConfig(size=SIZE, channels=1, z_dim=32, width=16, num_classes=10)
    G = train_prior(data, gcfg, TrainConfig(steps=steps, batch_size=32), dataset_name="fashion-mnist (first 9000)")
    save_prior(G, path)


def victims(dist: str) -> Dataset:
    if dist == "in":
        data = load_dataset("fashion-mnist", size=SIZE)
        return data.subset(list(range(len(data) - HOLDOUT, len(data))))
    data = load_dataset("faces", size=SIZE)
    return data.subset(torch.nonzero(data.labels == 0).flatten())  # the 100 faces


def batches(dist: str, B: int, n_batches: int) -> list[list[int]]:
    data = victims(dist)
    g = torch.Generator().manual_seed(1234)
    if dist == "in":  # distinct classes inside a batch, fixed draw
        out = []
        for _ in range(n_batches):
            classes = torch.randperm(10, generator=g)[:B]
            out.append(
                [
                    int(
                        torch.nonzero(data.labels == c).flatten()[
                            torch.randint(int((data.labels == c).sum()), (1,), generator=g)
                        ]
                    )
                    for c in classes
                ]
            )
        return out
    perm = torch.randperm(len(data), generator=g)[: B * n_batches].tolist()
    return [perm[i * B : (i + 1) * B] for i in range(n_batches)]


def observe(dist: str, idx: list[int], defense: str):
    data = victims(dist).subset(idx)
    sc = Scenario(batch_size=len(idx), unique_labels=False, bn_mode="eval", seed=0)
    torch.manual_seed(0)
    model = ThinResNet18(len(data.classes), data.image_shape)
    obs, truth = simulate(sc, dataset=data, model=model)
    info = {"clean_norm": update_norm(obs.update)}
    if defense == "none":
        return obs, truth, info
    if defense in ("noise", "noise0.01"):
        scale = max(float(v.abs().max()) for v in obs.update.values())
        d = GaussianNoise((0.1 if defense == "noise" else 0.01) * scale)
        info["sigma"] = d.sigma
        info["noise_to_gradient_norm"] = (
            d.sigma * sum(v.numel() for v in obs.update.values()) ** 0.5 / info["clean_norm"]
        )
    elif defense == "clip":
        d = Clip(0.5 * info["clean_norm"])
    else:
        d = Sparsify(0.9)
    upd = d(obs.update, generator=torch.Generator().manual_seed(99))
    obs = obs.with_update(upd, d.to_json())
    info["defended_norm"] = update_norm(upd)
    return obs, truth, info


def run_attack(column: str, obs, labels, seed: int, a):
    """One column's attack on one update, at the row's budget of ``a.steps × a.restarts`` gradient queries
    (times ``budget_factor`` for an ablation column that asks for more)."""
    name, extra = ABLATION.get(column, (column, {}))
    extra = dict(extra)
    queries = a.steps * a.restarts * extra.pop("budget_factor", 1)
    if name == "ggl":
        population = extra.pop("population", GGL_POPULATION)
        kw = {"iterations": queries // population, "population": population}
    else:
        kw = {"iterations": a.steps, "restarts": a.restarts}
    if name != "inverting_gradients":
        kw["prior"] = a.prior
    return ATTACKS.get(name)(**kw, **extra).run(obs, labels, generator=torch.Generator().manual_seed(seed))


def check(a) -> int:
    """Rerun the first update of ``ABLATION_CELL`` for ``CHECK_COLUMNS``; 1 if a PSNR moved by more than
    ``CHECK_TOLERANCE`` dB from ``results.json``."""
    runs = json.loads((Path(a.out) / "results.json").read_text())["runs"]
    dist, B, defense = ABLATION_CELL.split("/")
    idx = batches(dist, int(B), 1)[0]
    obs, truth, _ = observe(dist, idx, defense)
    labels = recover_labels(obs, "idlg" if B == "1" else ("sum" if dist == "in" else "auto"))
    failed = 0
    for name in CHECK_COLUMNS:
        t0 = time.perf_counter()
        got = score_images(run_attack(name, obs, labels, 0, a).images, truth.images).psnr
        want = runs[f"{ABLATION_CELL}/0/{name}"]["psnr"]
        diff = max(abs(g - w) for g, w in zip(got, want))
        ok = diff <= CHECK_TOLERANCE
        failed += not ok
        print(
            f"{name}: PSNR {got[0]:.3f} vs committed {want[0]:.3f} (|Δ| {diff:.4f} dB, tolerance "
            f"{CHECK_TOLERANCE}) {'ok' if ok else 'MISMATCH'} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="gradient queries per restart (every row)")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--prior", default=str(HERE / "prior.safetensors"))
    p.add_argument("--prior-steps", type=int, default=2500)
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--only", help="comma list of cells dist/B/defense to run, e.g. in/1/none")
    p.add_argument("--check", action="store_true", help="rerun one seeded update and compare with results.json")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    if a.check:
        return check(a)
    out = Path(a.out)
    get_prior(Path(a.prior), a.prior_steps)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results.setdefault("runs", {})
    results["setup"] = {
        "steps_per_restart": a.steps,
        "restarts": a.restarts,
        "ggl": f"CMA-ES, {a.steps * a.restarts // GGL_POPULATION} rounds of {GGL_POPULATION} candidates "
        "(the same number of gradient queries), latent bounded by tanh",
        "gifd_radius": "official BigGAN radii per feature entry (gifd.PAPER_RADIUS)",
        "image_size": SIZE,
        "model": "ResNet-18 topology, width 16",
        "prior": Path(a.prior).name,
        "prior_meta": load_prior(a.prior).meta.get("training"),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "defenses": {
            "noise": "sigma = 0.1 * max|g_clean|",
            "noise0.01": "sigma = 0.01 * max|g_clean| (extra rows)",
            "clip": "max_norm = 0.5 * ||g_clean||",
            "sparsify": "ratio 0.9 per tensor",
        },
    }
    only = set(a.only.split(",")) if a.only else None
    cells = [
        (dist, B, d)
        for dist in ("in", "ood")
        for B in (1, 4)
        for d in DEFENSES + EXTRA_DEFENSES
        if d in DEFENSES or (only and f"{dist}/{B}/{d}" in only)
    ]
    for dist, B, defense in cells:
        cell = f"{dist}/{B}/{defense}"
        if only and cell not in only:
            continue
        n_batches = 5 if B == 1 else 2
        originals, recon = [], {n: [] for n in ATTACK_NAMES}
        for bi, idx in enumerate(batches(dist, B, n_batches)):
            obs, truth, info = observe(dist, idx, defense)
            labels = recover_labels(obs, "idlg" if B == 1 else ("sum" if dist == "in" else "auto"))
            originals.append(truth.images)
            columns = ATTACK_NAMES + (tuple(ABLATION) if cell == ABLATION_CELL else ())
            for name in columns:
                key = f"{cell}/{bi}/{name}"
                t0 = time.perf_counter()
                r = run_attack(name, obs, labels, bi, a)
                s = score_images(r.images, truth.images)
                if name in recon:
                    recon[name].append(r.images[s.order])
                if key not in results["runs"]:
                    results["runs"][key] = {
                        "psnr": s.psnr,
                        "ssim": s.ssim,
                        "seconds": time.perf_counter() - t0,
                        "final_loss": r.final_loss,
                        "gradient_queries": r.assumptions.get("gradient_queries", a.steps * a.restarts),
                        "label_accuracy": float(
                            (torch.tensor(labels.labels).sort().values == truth.labels.sort().values).float().mean()
                        ),
                        "chosen_stage": r.assumptions.get("chosen_stage"),
                        "defense": info,
                    }
                print(
                    f"{key}: PSNR {sum(s.psnr) / len(s.psnr):.2f} SSIM {sum(s.ssim) / len(s.ssim):.3f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            res_path.write_text(json.dumps(results, indent=1))
        save_grid(
            out / "grids" / f"{dist}_b{B}_{defense}.png",
            torch.cat(originals),
            [torch.cat(recon[n]) for n in ATTACK_NAMES],
        )
    summarize(results, out)
    return 0


def summarize(results: dict, out: Path) -> None:
    table: dict = {}
    for key, run in results["runs"].items():
        dist, B, defense, _, name = key.split("/")
        t = table.setdefault((dist, int(B), defense), {}).setdefault(name, {"psnr": [], "ssim": [], "seconds": 0.0})
        t["psnr"] += run["psnr"]
        t["ssim"] += run["ssim"]
        t["seconds"] += run["seconds"]
    summary, rows = [], []
    order = DEFENSES + EXTRA_DEFENSES
    for (dist, B, defense), attacks in sorted(
        table.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]))
    ):
        m = {
            n: (sum(v["psnr"]) / len(v["psnr"]), sum(v["ssim"]) / len(v["ssim"]), len(v["psnr"]), v["seconds"])
            for n, v in attacks.items()
        }
        entry = {
            "distribution": dist,
            "batch": B,
            "defense": defense,
            **{f"{n}_{k}": m[n][i] for n in m for i, k in enumerate(("psnr", "ssim", "images", "seconds"))},
        }
        if all(n in m for n in ATTACK_NAMES):
            ig, ggl, adam, gifd = (m[n] for n in ATTACK_NAMES)
            entry["ggl_gt_ig"] = bool(ggl[0] > ig[0])
            entry["gifd_ge_ggl"] = bool(gifd[0] >= ggl[0] and gifd[1] >= ggl[1])
            cells = " | ".join(f"{v[0]:.2f} / {v[1]:.3f}" for v in (ig, ggl, adam, gifd))
            rows.append(
                f"| {dist} | {B} | {defense} | {cells} | {gifd[2]} | {ggl[0] - ig[0]:+.2f} | "
                f"{'yes' if entry['ggl_gt_ig'] else '**no**'} | {'yes' if entry['gifd_ge_ggl'] else '**no**'} |"
            )
        summary.append(entry)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    s = results["setup"]
    md = [
        "# Generative-prior attacks: IG vs GGL (CMA-ES) vs the Adam latent search vs GIFD",
        "",
        f"Budget per row: {s['steps_per_restart'] * s['restarts']} gradient queries per update: "
        f"{s['steps_per_restart']} Adam steps × {s['restarts']} restarts for IG, `latent_adam` and GIFD; "
        f"GGL: {s['ggl']}. {s['model']}, {s['image_size']}×{s['image_size']} grey, random init, BN eval, "
        "FedSGD. Prior: class-conditional DCGAN on Fashion-MNIST (first 9000 test images). "
        "`in` = held-out Fashion-MNIST, `ood` = LFW faces. Mean PSNR (dB) / SSIM over the images "
        "(B=1: 5 updates; B=4: 2 updates = 8 images). Each attack returns its own choice by matching loss "
        "(GGL: best candidate; `latent_adam`: best restart; GIFD: best stage and restart); ground truth "
        "is used only to score. GIFD's l1 radii: " + s["gifd_radius"] + ".",
        "",
        "| data | B | defense | IG | GGL (CMA-ES) | latent_adam | GIFD | images | GGL − IG (dB) | "
        "GGL > IG | GIFD ≥ GGL (PSNR and SSIM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Paper direction — GGL > IG: {PAPER['ggl']}. GIFD ≥ GGL: {PAPER['gifd']}. Here GGL > IG holds in "
        f"{sum(e.get('ggl_gt_ig', False) for e in summary)} of {len(rows)} rows and GIFD ≥ GGL in "
        f"{sum(e.get('gifd_ge_ggl', False) for e in summary)} of {len(rows)}.",
        "",
    ]
    ad, ab, adef = ABLATION_CELL.split("/")
    abl = table.get((ad, int(ab), adef))
    if abl:
        md += [
            f"## Ablation on {ABLATION_CELL} (same 5 updates)",
            "",
            "| variant | PSNR / SSIM | gradient queries |",
            "|---|---|---|",
        ]
        for name in ("ggl", "ggl_budget_x10", "gifd", "gifd_radius_x0.25", "gifd_radius_x4"):
            if name in abl:
                v = abl[name]
                label = {
                    "ggl": f"GGL, {GGL_POPULATION} candidates a round",
                    "ggl_budget_x10": "GGL, 50 candidates a round (official), ten times the budget",
                    "gifd": "GIFD, official radii per entry",
                    "gifd_radius_x0.25": "GIFD, radii × 0.25",
                    "gifd_radius_x4": "GIFD, radii × 4",
                }[name]
                md.append(
                    f"| {label} | {sum(v['psnr']) / len(v['psnr']):.2f} / {sum(v['ssim']) / len(v['ssim']):.3f} | "
                    f"{results['runs'][f'{ABLATION_CELL}/0/{name}']['gradient_queries']} |"
                )
        md.append("")
    md += [
        f"Timings ({s.get('note', 'see results.json')}) are in results.json. "
        "`grids/<data>_b<B>_<defense>.png`: originals, then IG, GGL, `latent_adam`, GIFD (one row each). "
        "`prior_samples.png`: samples of the prior.",
        "",
    ]
    (out / "results.md").write_text("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
