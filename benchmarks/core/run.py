"""Core benchmark (issue 2): attack-loop speed and the default audit's reconstruction quality.

1. Speed: Inverting-Gradients iterations per second for ConvNet (width 64) and ResNet-18 (CIFAR
   stem) at 32×32, batch 1 and 8, after a short warm-up; records threads, OpenMP wait policy and load.
2. Quality: the default audit's attack (``ig_batch_tv``, its default budget; on one image it is
   ``ig_relative_tv_plateau``, which results.json names; ``--attack`` another) on the default scenario (ConvNet,
   bundled photos, 32×32, batch 1) over several seeds (different images), PSNR/SSIM against the original and
   against a constant-grey guess.

    python benchmarks/core/run.py                 # both parts; writes results.json and results.md here
    python benchmarks/core/run.py --part speed    # one part
    python benchmarks/core/run.py --part quality --attack inverting_gradients --out FILE   # the paper's attack
    python benchmarks/core/run.py --part quality --model resnet18 --batch 8 --iterations 100 --out FILE
    python benchmarks/core/run.py --check [--record] [--out FILE]   # rerun seed 0 against FILE (or its record for
                                                                    # this kind of CPU); --record stores the rerun
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from gradleak.attacks import ATTACKS
from gradleak.attacks.matching import MatchingConfig, MatchingProblem, run_matching
from gradleak.auditing import DEFAULT_ATTACK
from gradleak.cost import CHECK_RECORDS, check_reference, cpu_kind, record_check
from gradleak.labels import recover_labels
from gradleak.metrics import grey_psnr, score_images
from gradleak.scenario import Scenario, simulate

HERE = Path(__file__).parent


def machine() -> dict:
    return {
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_before": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kind": cpu_kind(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def speed(model: str, batch: int, iters: int = 30, warmup: int = 5) -> dict:
    sc = Scenario(
        model=model, batch_size=batch, unique_labels=batch <= 10, bn_mode="train", seed=0
    )  # the pre-0.2 defaults, kept so the committed cells reproduce
    obs, _ = simulate(sc)
    labels = torch.tensor(recover_labels(obs, "idlg" if batch == 1 else "sum").labels)
    stamps: list[float] = []
    cfg = MatchingConfig(iterations=iters + warmup, tv=0.2, log_every=1, checkpoint_every=10**9)
    run_matching(
        MatchingProblem(obs, labels, cfg),
        batch_size=batch,
        generator=torch.Generator().manual_seed(0),
        on_step=lambda s: stamps.append(time.perf_counter()),
    )
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]
    med = statistics.median(gaps)
    return {
        "model": model,
        "batch": batch,
        "s_per_it": med,
        "it_per_s": 1 / med,
        "iters_timed": len(gaps),
        "load_after": os.getloadavg(),
    }


def quality(
    seeds: list[int], model: str | None = None, attack: str = DEFAULT_ATTACK, batch: int = 1, **settings: float | int
) -> list[dict]:
    """``attack`` (the default audit's) on the default scenario per seed; ``settings`` override the attack's defaults
    (e.g. ``lr=0.3`` or ``tv=0``: issue 19's measurements, each written to its own results file), ``model`` the
    scenario's model (issue 19: step sizes per model family)."""
    rows = []
    for seed in seeds:
        sc = Scenario(seed=seed, unique_labels=True)  # the default audit's scenario; 0.1 drew distinct labels
        if model is not None:
            sc = replace(sc, model=model)
        sc = replace(sc, batch_size=batch)
        obs, truth = simulate(sc)
        t0 = time.perf_counter()
        res = ATTACKS.get(attack)(**settings).run(obs, generator=torch.Generator().manual_seed(seed))
        s = score_images(res.images, truth.images)
        rows.append(
            {
                "seed": seed,
                "class": ", ".join(truth.classes[int(label)] for label in truth.labels),
                "iterations": res.iterations,
                "seconds": time.perf_counter() - t0,
                "psnr": s.mean_psnr,
                "ssim": s.mean_ssim,
                "grey_psnr": float(grey_psnr(truth.images).mean()),
                "final_loss": res.final_loss,
            }
        )
    return rows


CHECK_PSNR_TOL = 0.1  # dB; the run is seeded, so the same code gives the same number at a thread count


def check(path: Path, record: bool = False) -> int:
    """``--check``: rerun the quality row of seed 0 (the default audit's first draw) with the file's attack and
    settings, at the file's thread count, and compare its PSNR with the committed one, or with the file's record
    for this kind of CPU (``gradleak.cost.check_reference``). One image gives the same PSNR at 1 and 2 threads; a
    batch need not (ConvNet B=4: 21.78 dB at 1 thread, 21.52 at 2). ``record``: store the rerun as this CPU
    kind's record in the file."""
    results = json.loads(path.read_text())
    q = results["quality"]
    machine_then = results.get("machine_quality", {})
    committed_on = machine_then.get("cpu_capability", "an unrecorded CPU capability")
    if "threads" in machine_then:
        torch.set_num_threads(machine_then["threads"])
    committed = {"psnr": next(r for r in q["rows"] if r["seed"] == 0)["psnr"]}
    want, source = check_reference(results, committed)
    got = quality(
        [0], q.get("model"), q.get("attack", "inverting_gradients"), q.get("batch", 1), **q.get("attack_settings", {})
    )[0]
    ok = abs(got["psnr"] - want["psnr"]) <= CHECK_PSNR_TOL
    print(
        f"check core quality seed 0 at {torch.get_num_threads()} thread(s) on {cpu_kind()}: PSNR {got['psnr']:.3f} "
        f"vs {want['psnr']:.3f}, {source} (tolerance {CHECK_PSNR_TOL} dB; the committed {committed['psnr']:.3f} "
        f"ran on {committed_on}) {'OK' if ok else 'MISMATCH'}"
    )
    if record:
        kind = record_check(results, {"psnr": got["psnr"]})
        path.write_text(json.dumps(results, indent=2))
        print(f"recorded for {kind} in {path}")
        return 0
    return 0 if ok else 1


def render(results: dict) -> str:
    """The results file's Markdown (``results.md`` beside ``results.json``)."""
    md = ["# Core benchmark", ""]
    if "speed" in results:
        md += [
            f"Speed — machine: {results['machine_speed']}",
            "",
            "| model | batch | s/iteration | iterations/s |",
            "|---|---|---|---|",
        ]
        md += [f"| {r['model']} | {r['batch']} | {r['s_per_it']:.3f} | {r['it_per_s']:.2f} |" for r in results["speed"]]
        md.append("")
    if "quality" in results:
        q = results["quality"]
        md += [
            f"Quality — machine: {results['machine_quality']} (quality does not depend on load); model "
            f"{q.get('model', Scenario().model)}, batch {q.get('batch', 1)}; {q.get('attack', 'inverting_gradients')} "
            "with its defaults"
            f"{''.join(f', {k} {v}' for k, v in q.get('attack_settings', {}).items())}",
            "",
            "| seed | class | iterations | seconds | PSNR dB | SSIM | grey PSNR dB |",
            "|---|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['seed']} | {r['class']} | {r['iterations']} | {r['seconds']:.0f} | {r['psnr']:.2f} | "
            f"{r['ssim']:.3f} | {r['grey_psnr']:.2f} |"
            for r in q["rows"]
        ]
        md += ["", f"Mean PSNR {q['mean_psnr']:.2f} dB (min {q['min_psnr']:.2f}), mean SSIM {q['mean_ssim']:.3f}."]
    return "\n".join(md) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("speed", "quality", "all"), default="all")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--check", action="store_true", help="rerun the seed-0 quality row; exit 1 if off results.json")
    ap.add_argument("--record", action="store_true", help="with --check: store the rerun as this CPU kind's record")
    ap.add_argument("--attack", default=DEFAULT_ATTACK, help="quality: the attack (default: the default audit's)")
    ap.add_argument("--lr", type=float, help="quality: the attack's Adam step instead of its default (use with --out)")
    ap.add_argument("--iterations", type=int, help="quality: the attack's iterations instead of its default")
    ap.add_argument("--tv", type=float, help="quality: the attack's total-variation weight instead of its default")
    ap.add_argument("--patience", type=int, help="quality: the plateau schedule's patience instead of its default")
    ap.add_argument("--model", help="quality: the scenario's model instead of the default audit's (use with --out)")
    ap.add_argument("--batch", type=int, default=1, help="quality: the client's batch size (use with --out)")
    ap.add_argument("--render", action="store_true", help="rewrite the --out file's Markdown from it (no run)")
    a = ap.parse_args()
    out = Path(a.out)
    if a.record and not a.check:
        ap.error("--record needs --check")
    if a.check:
        return check(out, a.record)
    if a.render:
        out.with_suffix(".md").write_text(render(json.loads(out.read_text())))
        return 0
    results = json.loads(out.read_text()) if out.exists() else {}
    if a.part in ("speed", "all"):
        results["machine_speed"] = machine()
        results["speed"] = [speed(m, b) for m in ("convnet", "resnet18") for b in (1, 8)]
    if a.part in ("quality", "all"):
        results["machine_quality"] = machine()
        results.pop(CHECK_RECORDS, None)  # the records were of the numbers this run replaces
        settings = {k: getattr(a, k) for k in ("lr", "iterations", "tv", "patience") if getattr(a, k) is not None}
        rows = quality([int(s) for s in a.seeds.split(",")], a.model, a.attack, a.batch, **settings)
        results["quality"] = {
            "model": a.model or Scenario().model,
            "batch": a.batch,
            "attack": a.attack,
            "attack_settings": settings,
            "rows": rows,
            "mean_psnr": statistics.mean(r["psnr"] for r in rows),
            "mean_ssim": statistics.mean(r["ssim"] for r in rows),
            "min_psnr": min(r["psnr"] for r in rows),
        }
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(render(json.loads(out.read_text())))  # as --render writes it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
