"""When does GradInversion's BatchNorm term help? A small, fast experiment behind the ablation (issue 4).

Same client batch, same budget; two regimes for the BatchNorm running statistics the server sends:

- ``identity``: a freshly initialised model (running mean 0, variance 1 — eval-mode BN is then an
  affine map), the setting of breaching's honest-server cases;
- ``real-data``: running statistics set to the exact population statistics of the bundled images
  (what a model trained on such data carries).

Rows: Inverting Gradients (its defaults), GradInversion's gradient term only (BN, TV, L2 off), + BN
term toward the running statistics, + BN term toward the client batch's exact statistics (an oracle
upper bound for the prior). No group term (one question at a time); |G| = 2 seeds, best by matching
loss. The client is in eval mode (FedSGD), the model the zoo ConvNet at width 8, 16×16 photos, B = 2.

    python benchmarks/gradinversion/bn_regimes.py [--iterations 300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.attacks.gradinversion import save_batch_statistics
from gradleak.data import load_dataset
from gradleak.metrics import score_images
from gradleak.scenario import Scenario, build_scenario_model, simulate

ROWS = ("inverting gradients", "GI grad only", "GI + BN (running)", "GI + BN (exact batch)")


def make_case(regime: str, seed: int, args):
    data = load_dataset("photos", size=args.size)
    sc = Scenario(
        model="convnet",
        model_kwargs={"width": args.width},
        dataset="photos",
        image_size=args.size,
        batch_size=args.batch,
        seed=seed,
        bn_mode="eval",
        unique_labels=True,
    )
    model, _ = build_scenario_model(sc, data.num_classes, data.image_shape)
    if regime == "real-data":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average = exact population statistics
        with torch.no_grad():
            model.train()(data.normalization.normalize(data.images))
        model.eval()
    obs, truth = simulate(sc, dataset=data, model=model)
    return obs, truth


def run_row(row: str, obs, truth, stats_file: str, args, seed: int):
    gen = torch.Generator().manual_seed(100 + seed)
    if row == "inverting gradients":
        return ATTACKS.get("inverting_gradients")(iterations=args.iterations).run(obs, generator=gen)
    kw = dict(iterations=args.iterations, restarts=2, group="none", warmup=args.iterations // 20)
    if row == "GI grad only":
        kw.update(bn=0.0, tv=0.0, l2=0.0)
    elif row == "GI + BN (exact batch)":
        kw.update(bn_statistics=stats_file)
    return ATTACKS.get("gradinversion")(**kw).run(obs, generator=gen)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent))
    args = p.parse_args()
    torch.set_num_threads(2)
    runs, t_start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for regime in ("identity", "real-data"):
            for seed in args.seeds:
                obs, truth = make_case(regime, seed, args)
                stats_file = str(
                    save_batch_statistics(
                        obs.model, obs.normalization.normalize(truth.images), Path(tmp) / f"{regime}{seed}.safetensors"
                    )
                )
                grey = score_images(torch.full_like(truth.images, float(truth.images.mean())), truth.images)
                runs.append(
                    {
                        "regime": regime,
                        "seed": seed,
                        "row": "grey image",
                        "psnr": grey.mean_psnr,
                        "ssim": grey.mean_ssim,
                        "final_match": None,
                    }
                )
                for row in ROWS:
                    t0 = time.perf_counter()
                    res = run_row(row, obs, truth, stats_file, args, seed)
                    s = score_images(res.images, truth.images)
                    runs.append(
                        {
                            "regime": regime,
                            "seed": seed,
                            "row": row,
                            "psnr": s.mean_psnr,
                            "ssim": s.mean_ssim,
                            "final_match": res.final_loss,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    print(
                        f"[{time.perf_counter() - t_start:5.0f}s] {regime} seed {seed} {row}: PSNR {s.mean_psnr:.2f} "
                        f"SSIM {s.mean_ssim:.3f} loss {res.final_loss:.3g}",
                        flush=True,
                    )
    lines = [
        "| regime | row | PSNR (dB) | SSIM | final matching distance, median (IG: cosine; GI: Σ_l ‖·‖₂) |",
        "|---|---|---|---|---|",
    ]
    for regime in ("identity", "real-data"):
        for row in ("grey image",) + ROWS:
            rs = [r for r in runs if r["regime"] == regime and r["row"] == row]
            ps, ss = [r["psnr"] for r in rs], [r["ssim"] for r in rs]
            loss = [r["final_match"] for r in rs if r["final_match"] is not None]
            lines.append(
                f"| {regime} | {row} | {statistics.mean(ps):.2f} ± {statistics.stdev(ps):.2f} | "
                f"{statistics.mean(ss):.3f} | {f'{statistics.median(loss):.3g}' if loss else '–'} |"
            )
    out = Path(args.out)
    (out / "bn_regimes.json").write_text(
        json.dumps(
            {
                "benchmark": "GradInversion BN term by regime (issue 4)",
                "settings": vars(args),
                "machine": {
                    "torch": torch.__version__,
                    "platform": platform.platform(),
                    "threads": torch.get_num_threads(),
                    "load_average_at_end": os.getloadavg(),
                },
                "runs": runs,
            },
            indent=1,
        )
    )
    table = "\n".join(lines)
    (out / "bn_regimes_table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
