"""GradInversion ablation benchmark (issue 4): grad only < + fidelity < + lazy group < + registered
group, with Inverting Gradients at the same iteration budget, on a ResNet-18 with real-data BN
statistics, 32×32 bundled photos, batch 4 and 8, several experiment seeds.

    python benchmarks/gradinversion/run.py [--iterations 150] [--seeds 0 1 2] [--batches 4 8]
                                           [--width 8] [--out benchmarks/gradinversion]

Model: the ResNet-18 topology of the zoo (CIFAR stem, 4 stages × 2 BasicBlocks, 20 BatchNorm
layers) at base width ``--width`` (zoo ResNet-18: 64). Weights: seeded random initialisation.
BN running statistics: *computed* from real data — the exact population mean/variance of every BN
layer's input over all 80 bundled ``photos`` images (train-mode forward, cumulative average), not
the default 0/1. The client trains in train mode (batch statistics), FedSGD, distinct labels.
Writes ``results.json`` (every run) and ``results.md`` (summary) into ``--out``; resumable: runs
already in ``results.json`` are skipped.
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


def build_model(data, width: int, seed: int = 0, train_steps: int = 0) -> tuple[nn.Module, dict]:
    """The model and how its BN statistics were made. ``train_steps`` > 0: SGD (lr 0.05, momentum 0.9,
    batches of 32, train mode) on the bundled photos, BN running statistics updated as in training;
    0: seeded random weights with BN running statistics set to the exact population statistics."""
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
        info["bn_statistics"] = "running statistics of the brief training on the 80 photos"
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
    info["bn_statistics"] = "exact population statistics of the 80 photos (random weights)"
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
        "| batch | method | PSNR (dB) | SSIM | IIP | best-seed PSNR | best-seed SSIM | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in args.batches:
        for row in rows:
            rs = [r for r in runs if r["batch"] == b and r["row"] == row]
            if not rs:
                continue

            def ms(key, sub="output"):
                v = [r[sub][key] for r in rs if sub in r]
                if not v:
                    return "–"
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                return (
                    f"{statistics.mean(v):.2f} ± {sd:.2f}" if key == "psnr" else f"{statistics.mean(v):.3f} ± {sd:.3f}"
                )

            sub = "best candidate" if any("best candidate" in r for r in rs) else "output"
            lines.append(
                f"| {b} | {row} | {ms('psnr')} | {ms('ssim')} | {ms('iip')} | {ms('psnr', sub)} | "
                f"{ms('ssim', sub)} | {len(rs)} |"
            )
        gs = [v for k, v in greys.items() if k.startswith(f"{b}/")]
        if gs:
            lines.append(
                f"| {b} | *grey image (batch mean)* | {statistics.mean(g['psnr'] for g in gs):.2f} | "
                f"{statistics.mean(g['ssim'] for g in gs):.3f} | – | – | – | {len(gs)} |"
            )
    return "\n".join(lines)


def main() -> None:
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
    p.add_argument("--out", default=str(Path(__file__).parent))
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    data = load_dataset("photos", size=32)
    model, model_info = build_model(data, args.width, train_steps=args.train_steps)
    label_method = "gradinversion-min"
    prev = json.loads(path.read_text()) if path.exists() else {}
    same = ("seeds", "batches", "rows", "out")  # settings that may differ between resumed runs
    key = {k: v for k, v in vars(args).items() if k not in same}
    runs = prev.get("runs", []) if {k: v for k, v in prev.get("settings", {}).items() if k not in same} == key else []
    done = {(r["row"], r["batch"], r["seed"]) for r in runs}
    rows = args.rows or (list(GI_ROWS) + ["inverting gradients"])
    label_acc, greys = {}, {}
    t_start = time.perf_counter()
    for b in args.batches:
        for seed in args.seeds:
            sc = Scenario(dataset="photos", image_size=32, batch_size=b, seed=seed, bn_mode="train", unique_labels=True)
            obs, truth = simulate(sc, dataset=data, model=model)
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
                settings = {k: v for k, v in vars(args).items() if k != "out"}
                result = {
                    "schema": 1,
                    "benchmark": "gradinversion ablation (issue 4)",
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


if __name__ == "__main__":
    main()
