"""GradInversion ablation benchmark (issue 4): grad only < + fidelity < + lazy group < + registered
group, with Inverting Gradients at the same iteration budget, on a ResNet-18 with real-data BN
statistics, 32×32 bundled photos, batch 4 and 8, several experiment seeds.

    python benchmarks/gradinversion/run.py [--iterations 150] [--seeds 0 1 2] [--batches 4 8]
                                           [--width 8] [--out benchmarks/gradinversion]

Model: the ResNet-18 topology of the zoo (CIFAR stem, 4 stages × 2 BasicBlocks, 20 BatchNorm
layers) at base width ``--width`` (zoo ResNet-18: 64). Weights: seeded random initialisation.
BN running statistics: *computed* from real data that is not the victim's — the exact population
mean/variance of every BN layer's input over half of the bundled ``photos`` (every other crop of each
class; train-mode forward, cumulative average), not the default 0/1. The client's batches are drawn from
the other half only. The client trains in train mode (batch statistics), FedSGD, distinct labels.

Every GradInversion row (|G| > 1 seeds) reports both the seed with the lowest matching loss and the
seeds' consensus (registered or plain mean), whichever the attack returns: averaging alone moves PSNR
toward the grey level, so only same-kind columns compare across rows.

Writes ``results.json`` (every run) and ``summary_table.md`` into ``--out``; resumable: runs already in
``results.json`` are skipped. ``--check`` reruns seed 0 of two rows and compares with ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.data import load_dataset
from gradleak.labels import recover_labels
from gradleak.metrics import label_accuracy, score_images
from gradleak.metrics.identifiability import image_identifiability
from gradleak.models.zoo import BasicBlock, ResNet
from gradleak.scenario import Scenario, simulate


class ResNet18(ResNet):
    """Zoo ResNet-18 (CIFAR stem) with a base width other than 64."""

    def __init__(self, num_classes: int, input_shape, width: int = 64):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        cin = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks = []
            for j in range(2):
                blocks.append(BasicBlock(cin, planes, stride=2 if (j == 0 and i > 0) else 1))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)


def split(data) -> tuple:
    """(statistics part, victim part): every other crop of each class, so the server's BN statistics (and any
    training) never see an image of the attacked batches."""
    stats_idx, victim_idx = [], []
    for c in torch.unique(data.labels).tolist():
        members = torch.nonzero(data.labels == c).flatten().tolist()
        stats_idx += members[0::2]
        victim_idx += members[1::2]
    return data.subset(torch.tensor(sorted(stats_idx))), data.subset(torch.tensor(sorted(victim_idx)))


def build_model(data, width: int, seed: int = 0, train_steps: int = 0) -> tuple[nn.Module, dict]:
    """The model and how its BN statistics were made, from ``data`` (non-victim images only). ``train_steps``
    > 0: SGD (lr 0.05, momentum 0.9, batches of 32, train mode), BN running statistics updated as in
    training; 0: seeded random weights with BN running statistics set to the exact population statistics."""
    torch.manual_seed(seed)
    model = ResNet18(data.num_classes, data.image_shape, width)
    x_all = data.normalization.normalize(data.images)
    info: dict = {"train_steps": train_steps}
    if train_steps:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(train_steps):
            idx = torch.randint(len(data), (32,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_all[idx]), data.labels[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            info["train_accuracy"] = float((model(x_all).argmax(1) == data.labels).double().mean())
        info["bn_statistics"] = f"running statistics of the brief training on {len(data)} non-victim photos"
        return model, info
    for m in model.modules():  # exact population statistics of the data
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x_all)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    info["bn_statistics"] = f"exact population statistics of {len(data)} non-victim photos (random weights)"
    return model, info


GI_ROWS = {
    "grad only": dict(bn=0.0, tv=0.0, l2=0.0, group="none"),
    "+ fidelity (TV, L2, BN)": dict(group="none"),
    "+ lazy group": dict(group="lazy"),
    "+ registered group": dict(group="registered"),
}


def run_one(row: str, obs, truth, data, index, labels, args, seed: int) -> dict:
    gen = torch.Generator().manual_seed(1000 + seed)
    t0 = time.perf_counter()
    if row == "inverting gradients":
        res = ATTACKS.get("inverting_gradients")(iterations=args.iterations).run(obs, labels, generator=gen)
        outputs = {"output": res.images}
    else:
        kw = dict(
            iterations=args.iterations,
            restarts=args.group_size,
            warmup=args.warmup,
            group_start=args.group_start,
            group_every=args.group_every,
            **GI_ROWS[row],
        )
        if args.distance:
            kw["distance"] = args.distance
        if args.grad_weight:
            kw["grad_weight"] = args.grad_weight
        if args.noise is not None:
            kw["noise"] = args.noise
        if args.bn is not None and GI_ROWS[row].get("bn") is None:
            kw["bn"] = args.bn
        res = ATTACKS.get("gradinversion")(**kw).run(obs, labels, generator=gen)
        outputs = {"output": res.images, **{k: v for k, v in res.stages.items()}}
    entry = {
        "row": row,
        "batch": len(truth.labels),
        "seed": seed,
        "iterations": args.iterations,
        "seconds": time.perf_counter() - t0,
        "final_loss": res.final_loss,
        "assumptions": res.assumptions,
    }
    for name, imgs in outputs.items():
        s = score_images(imgs, truth.images)
        iip = image_identifiability(obs.model, imgs, data.images, index, normalization=data.normalization)
        entry[name] = {
            "psnr": s.mean_psnr,
            "ssim": s.mean_ssim,
            "iip": iip.precision,
            "psnr_each": s.psnr,
            "ssim_each": s.ssim,
        }
    return entry


def summarise(runs: list[dict], args, greys: dict) -> str:
    rows = list(GI_ROWS) + ["inverting gradients"]
    lines = [
        "| batch | method | returned | best-seed PSNR (dB) | consensus PSNR (dB) | best-seed SSIM | consensus SSIM "
        "| IIP (returned) | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in args.batches:
        for row in rows:
            rs = [r for r in runs if r["batch"] == b and r["row"] == row]
            if not rs:
                continue

            def ms(key: str, sub: str, rs: list[dict] = rs) -> str:
                v = [r[sub][key] for r in rs if sub in r]
                if not v:
                    return "–"
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                return (
                    f"{statistics.mean(v):.2f} ± {sd:.2f}" if key == "psnr" else f"{statistics.mean(v):.3f} ± {sd:.3f}"
                )

            best = "best candidate" if any("best candidate" in r for r in rs) else "output"
            returned = rs[0]["assumptions"].get("output", "best") if row != "inverting gradients" else "best"
            lines.append(
                f"| {b} | {row} | {returned} | {ms('psnr', best)} | {ms('psnr', 'consensus')} | {ms('ssim', best)} | "
                f"{ms('ssim', 'consensus')} | {ms('iip', 'output')} | {len(rs)} |"
            )
        gs = [v for k, v in greys.items() if k.startswith(f"{b}/")]
        if gs:
            lines.append(
                f"| {b} | *grey image (batch mean)* | – | {statistics.mean(g['psnr'] for g in gs):.2f} | "
                f"{statistics.mean(g['psnr'] for g in gs):.2f} | {statistics.mean(g['ssim'] for g in gs):.3f} | "
                f"{statistics.mean(g['ssim'] for g in gs):.3f} | – | {len(gs)} |"
            )
    return "\n".join(lines)


CHECK_ROWS = ("+ fidelity (TV, L2, BN)", "+ registered group")
PSNR_TOL, SSIM_TOL = 0.3, 0.02  # --check: dB / SSIM; thread scheduling changes float sums over 100s of steps


def check(args, path: Path) -> int:
    """Rerun seed 0 of CHECK_ROWS at the committed settings and compare best seed and consensus."""
    committed = json.loads(path.read_text())
    for k, v in committed["settings"].items():
        setattr(args, k, v)
    data = load_dataset("photos", size=32)
    stats_part, victims = split(data)
    model, _ = build_model(stats_part, args.width, train_steps=args.train_steps)
    b, seed = args.batches[0], args.seeds[0]
    sc = Scenario(dataset="photos", image_size=32, batch_size=b, seed=seed, bn_mode="train")
    obs, truth = simulate(sc, dataset=victims, model=model)
    index = [int(((data.images - im).abs().flatten(1).sum(1)).argmin()) for im in truth.images]
    labels = recover_labels(obs, committed["label_method"])
    bad = []
    for row in CHECK_ROWS:
        fresh = run_one(row, obs, truth, data, index, labels, args, seed)
        old = next(r for r in committed["runs"] if (r["row"], r["batch"], r["seed"]) == (row, b, seed))
        for sub in ("best candidate", "consensus"):
            dp, ds = (abs(fresh[sub][k] - old[sub][k]) for k in ("psnr", "ssim"))
            if dp > PSNR_TOL or ds > SSIM_TOL:
                bad.append(
                    f"{row} {sub}: PSNR {fresh[sub]['psnr']:.2f} vs {old[sub]['psnr']:.2f}, "
                    f"SSIM {fresh[sub]['ssim']:.3f} vs {old[sub]['ssim']:.3f}"
                )
    print(
        "check:",
        "OK" if not bad else "MISMATCH\n  " + "\n  ".join(bad),
        f"(B={b}, seed {seed}; tolerance PSNR {PSNR_TOL} dB, SSIM {SSIM_TOL})",
    )
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--group-start", type=float, default=0.25)
    p.add_argument("--group-every", type=float, default=0.04)
    p.add_argument("--distance", default=None)
    p.add_argument("--grad-weight", type=float, default=None)
    p.add_argument("--rows", nargs="+", default=None)
    p.add_argument("--train-steps", type=int, default=0, help="briefly train the model first (0: random weights)")
    p.add_argument("--bn", type=float, default=None, help="α_BN (default: the attack's)")
    p.add_argument("--noise", type=float, default=None, help="α_n (default: the attack's)")
    p.add_argument("--out", default=str(Path(__file__).parent / "rerun"))
    p.add_argument("--check", action="store_true", help="rerun seed 0 of two rows; exit 1 if off results.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    path = out / "results.json"
    if args.check:
        return check(args, path)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("photos", size=32)
    stats_part, victims = split(data)
    model, model_info = build_model(stats_part, args.width, train_steps=args.train_steps)
    label_method = "gradinversion-min"
    prev = json.loads(path.read_text()) if path.exists() else {}
    same = ("seeds", "batches", "rows", "out", "check")  # settings that may differ between resumed runs
    key = {k: v for k, v in vars(args).items() if k not in same}
    runs = prev.get("runs", []) if {k: v for k, v in prev.get("settings", {}).items() if k not in same} == key else []
    done = {(r["row"], r["batch"], r["seed"]) for r in runs}
    rows = args.rows or (list(GI_ROWS) + ["inverting gradients"])
    label_acc, greys = {}, {}
    t_start = time.perf_counter()
    for b in args.batches:
        for seed in args.seeds:
            sc = Scenario(dataset="photos", image_size=32, batch_size=b, seed=seed, bn_mode="train")
            obs, truth = simulate(sc, dataset=victims, model=model)
            index = [int(((data.images - im).abs().flatten(1).sum(1)).argmin()) for im in truth.images]
            labels = recover_labels(obs, label_method)
            label_acc[f"{b}/{seed}"] = label_accuracy(truth.labels.tolist(), labels.labels)
            grey = score_images(torch.full_like(truth.images, float(truth.images.mean())), truth.images)
            greys[f"{b}/{seed}"] = {"psnr": grey.mean_psnr, "ssim": grey.mean_ssim}
            for row in rows:
                if (row, b, seed) in done:
                    continue
                entry = run_one(row, obs, truth, data, index, labels, args, seed)
                entry["label_accuracy"] = label_acc[f"{b}/{seed}"]
                runs.append(entry)
                print(
                    f"[{time.perf_counter() - t_start:7.0f}s] B={b} seed={seed} {row}: "
                    f"PSNR {entry['output']['psnr']:.2f} SSIM {entry['output']['ssim']:.3f} "
                    f"IIP {entry['output']['iip']:.2f} ({entry['seconds']:.0f}s)",
                    flush=True,
                )
                settings = {k: v for k, v in vars(args).items() if k not in ("out", "check")}
                result = {
                    "schema": 1,
                    "benchmark": "gradinversion ablation (issue 4; issue 16: held-out BN statistics, both outputs)",
                    "settings": settings,
                    "label_method": label_method,
                    "model": {"topology": f"ResNet-18, base width {args.width}", **model_info},
                    "grey_baseline": greys,
                    "machine": {
                        "python": sys.version.split()[0],
                        "torch": torch.__version__,
                        "platform": platform.platform(),
                        "threads": torch.get_num_threads(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                        "load_average_at_end": os.getloadavg(),
                    },
                    "runs": runs,
                }
                path.write_text(json.dumps(result, indent=1))
    (out / "summary_table.md").write_text(summarise(runs, args, greys) + "\n")
    print(summarise(runs, args, greys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
