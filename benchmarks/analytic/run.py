"""Benchmark of the analytic attacks and the per-layer analysis (issue 7; PAPERS.md §3).

Sections (each writes into results.json; results.md and analytic.png summarise):
  fc        exact FC recovery through an MLP's first layer with bias, B=1 and batches, bundled images
  layerwise R-GAP / Chen & Campbell on CNN6-family nets at 32×32 (B=1), conv2 width swept around the
            rank condition, with the analysis' prediction beside each reconstruction
  tensor    Wang, Lee & Lei's tensor method on random-init two-layer tanh nets: error vs width m and vs
            batch B (d = 20–100), plus one real-data batch (digits, d = 64)
  ranking   `analyze` on ResNet-18, ConvNet, LeNet, CNN6, CNN6-d vs the measured PSNR of the layer-wise
            attack (where it applies) and a short Inverting Gradients run: Spearman correlation

Run: python benchmarks/analytic/run.py [--quick] [--only SECTION ...] [--threads 1 2] [--check]
(--check reruns a small seeded subset of the tensor rows and compares with results.json; exit 1 on mismatch)
Records the thread count, OMP wait policy and load average; timings depend on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from gradleak.cost import machine

HERE = Path(__file__).resolve().parent


def log(*a) -> None:
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------------
def bench_fc(quick: bool) -> dict:
    from gradleak.attacks import ATTACKS
    from gradleak.metrics import score_images
    from gradleak.scenario import Scenario, simulate

    rows = []
    cases = [
        ("photos", 1, 1000),
        ("faces", 1, 1000),
        ("digits", 1, 256),
        ("photos", 4, 1000),
        ("photos", 8, 1000),
        ("faces", 8, 4000),
    ]
    for data, b, width in cases[: 4 if quick else None]:
        for seed in range(1 if quick else 3):
            sc = Scenario(
                model="mlp",
                model_kwargs={"width": width},
                dataset=data,
                batch_size=b,
                seed=seed,
                unique_labels=data != "faces",
            )
            obs, truth = simulate(sc)
            res = ATTACKS.get("analytic_fc")().run(obs, generator=torch.Generator().manual_seed(seed))
            s = score_images(res.images, truth.images)
            exact = res.assumptions["exact"]
            per = [s.psnr[s.order.index(j)] for j in range(b)]  # PSNR of each reconstruction j
            rows.append(
                {
                    "data": data,
                    "batch_size": b,
                    "width": width,
                    "seed": seed,
                    "seconds": res.seconds,
                    "exact_flags": exact,
                    "exact_count": sum(exact),
                    "psnr_exact": [p for p, e in zip(per, exact) if e],
                    "psnr_not_exact": [p for p, e in zip(per, exact) if not e],
                    "min_psnr_exact": min([p for p, e in zip(per, exact) if e], default=None),
                    "false_exact": sum(1 for p, e in zip(per, exact) if e and p < 60),
                }
            )
            log(
                f"fc {data} B={b} w={width} seed={seed}: exact {sum(exact)}/{b}, "
                f"min PSNR exact {rows[-1]['min_psnr_exact']}"
            )
    return {"rows": rows, "target": "PSNR > 60 dB for the samples recovered exactly"}


# ---------------------------------------------------------------------------------------------------
def bench_layerwise(quick: bool) -> dict:
    from gradleak.analyze import analyze_model
    from gradleak.attacks import ATTACKS
    from gradleak.metrics import score_images
    from gradleak.scenario import Scenario, simulate

    rows = []
    widths = [36, 20] if quick else [36, 28, 24, 20, 16, 12]
    for w in widths:
        for seed in range(1):
            sc = Scenario(
                model="cnn6",
                model_kwargs={"width2": w},
                dataset="photos",
                seed=seed,
                unique_labels=True,
                bn_mode="train",
            )  # the pre-0.2 defaults, kept so the committed cells reproduce
            obs, truth = simulate(sc)
            t = time.perf_counter()
            an = analyze_model(obs.model, obs.input_shape, obs.num_classes, name=f"cnn6 width2={w}")
            t_an = time.perf_counter() - t
            row = {
                "width2": w,
                "seed": seed,
                "copa_index": an.copa_index,
                "rgap_rank_index": an.rgap_rank_index,
                "conv2_rank": an.layers[1].rank,
                "conv2_unknowns": an.layers[1].unknowns,
                "analysis_seconds": t_an,
            }
            for name in ("rgap", "layerwise"):
                if name == "layerwise" and an.copa_index == 0:
                    continue  # identical to rgap when nothing is deficient
                res = ATTACKS.get(name)().run(obs, generator=torch.Generator().manual_seed(seed))
                s = score_images(res.images, truth.images)
                row[name] = {
                    "psnr": s.psnr[0],
                    "ssim": s.ssim[0],
                    "seconds": res.seconds,
                    "label_ok": res.labels == truth.labels.tolist(),
                    "gradient_distance": res.final_loss,
                    "deficient_layers": res.assumptions["deficient_layers"],
                }
                log(
                    f"layerwise cnn6 width2={w} seed={seed} {name}: PSNR {s.psnr[0]:.1f} dB "
                    f"(COPA {an.copa_index}, {res.seconds:.0f} s)"
                )
            rows.append(row)
    return {"rows": rows, "target": "PSNR > 40 dB for B=1 where the rank condition holds; degradation below it"}


# ---------------------------------------------------------------------------------------------------
TENSOR_SYMMETRY = (
    "With two classes, an odd σ (tanh) and no head bias, (x, y) and (−x, other class) give exactly the same "
    "gradient (PAPERS.md §3), so samples are scored modulo that flip: a reconstruction (−x, 1 − y) is flipped "
    "to (x, y) before its cosine, errors and label are measured. The 10-class digits row has no such symmetry "
    "and is scored as it is (signed cosine)."
)
CHECK_ROWS = [(20, 5, 3000, 0), (20, 5, 3000, 1), (20, 5, 30000, 0)]  # --check: a seeded subset, < 1 min
CHECK_TOL = {
    "min_cos": 1e-3,
    "mean_cos": 1e-3,
    "max_rel_error": 1e-2,
    "max_scale_error": 1e-2,
    "tensor_min_cos": 1e-3,
    "tensor_max_rel_error": 1e-2,
}


def _with_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _score(x, rec, truth, obs) -> dict:
    from gradleak.attacks.analytic.tensor import has_flip_symmetry, score_query

    sc = score_query(x, rec.labels, truth, has_flip_symmetry(obs))
    scale = [abs(float(x[j].norm() / truth.x[i].norm()) - 1) for i, j in enumerate(sc.order)]
    return {
        "cos": sc.cos,
        "min_cos": min(sc.cos),
        "mean_cos": sum(sc.cos) / len(sc.cos),
        "max_rel_error": max(sc.rel_error),
        "max_scale_error": max(scale),
        "labels_ok": sum(sc.labels_ok),
        "flip_symmetric": sc.symmetric,
    }


def tensor_row(d: int, b: int, m: int, seed: int, threads: list[int]) -> dict:
    """One tensor row at each thread count; the first count's numbers are the row's, the others give
    ``max_dcos_threads`` = the largest |Δcos| of any sample against it. Numbers without a prefix are the
    attack's output (polished); ``tensor_*`` the paper's estimate before the polish. A refusal (the fit
    check) is the row's result when every thread count refuses; a refusal at some counts only is recorded
    as not reproducing."""
    from gradleak.attacks.analytic.tensor import TensorConfig, reconstruct, single_query
    from gradleak.errors import UnsupportedError

    obs, truth = single_query(d=d, batch_size=b, width=m, seed=seed, num_classes=2)
    runs = []
    for n in threads:
        t = time.perf_counter()
        try:
            rec = _with_threads(n, lambda: reconstruct(obs, TensorConfig(max_noise=10.0)))
        except UnsupportedError as e:
            runs.append({"threads": n, "error": str(e), "seconds": time.perf_counter() - t})
            continue
        paper = _score(rec.x_tensor, rec, truth, obs)
        runs.append(
            {
                "threads": n,
                **_score(rec.x, rec, truth, obs),
                **{f"tensor_{k}": paper[k] for k in ("cos", "min_cos", "mean_cos", "max_rel_error", "labels_ok")},
                "noise": rec.noise,
                "fit_residual": rec.fit_residual,
                "gradient_distance_tensor": rec.info["gradient_distance_tensor"],
                "gradient_distance": rec.info["gradient_distance"],
                "polish_converged": rec.info["polish"]["converged"],
                "seconds": time.perf_counter() - t,
            }
        )
    head = {"d": d, "B": b, "m": m, "seed": seed}
    secs = {r["threads"]: r["seconds"] for r in runs}
    refused = [r for r in runs if "error" in r]
    if refused:
        out = {**head, **refused[0], "refused_at": [r["threads"] for r in refused], "seconds_per_thread_count": secs}
        out["reproduces"] = len(refused) == len(runs) and len({r["error"][:80] for r in refused}) == 1
        log(f"tensor d={d} B={b} m={m} seed={seed}: refused at {out['refused_at']} threads: {out['error'][:120]}")
        return out
    out = {**head, **runs[0], "seconds_per_thread_count": secs}
    out["max_dcos_threads"] = max(
        (abs(x - y) for r in runs[1:] for k in ("cos", "tensor_cos") for x, y in zip(r[k], runs[0][k])), default=0.0
    )
    out["reproduces"] = out["max_dcos_threads"] <= 1e-3
    log(
        f"tensor d={d} B={b} m={m} seed={seed}: min cos {out['min_cos']:.6f} (paper's estimate "
        f"{out['tensor_min_cos']:.4f}), rel. error {out['max_rel_error']:.1e} ({out['tensor_max_rel_error']:.3f}), "
        f"labels {out['labels_ok']}/{b}, |Δcos| threads {out['max_dcos_threads']:.1e}"
    )
    return out


def bench_tensor(quick: bool, threads: list[int]) -> dict:
    from gradleak.attacks.analytic.tensor import TensorConfig, reconstruct, score_query, single_query
    from gradleak.data import load_dataset
    from gradleak.metrics import psnr

    seeds = range(2 if quick else 3)
    widths = [2000, 20000] if quick else [1000, 3000, 10000, 30000, 100000]
    vs_m = [tensor_row(20, 5, m, s, threads) for m in widths for s in seeds]
    vs_b = [tensor_row(50, b, 100000, s, threads) for b in ([5, 25] if quick else [5, 10, 25]) for s in seeds[:2]]
    big = [] if quick else [tensor_row(100, b, 100000, 0, threads) for b in (10, 50)]
    # real data: standardised 8×8 digits as d = 64 vectors, 10 classes (no flip symmetry)
    dg = load_dataset("digits", size=8)
    imgs, labels = dg.sample(8, generator=torch.Generator().manual_seed(0), unique_labels=True)
    x = dg.normalization.normalize(imgs).flatten(1)
    obs, truth = single_query(d=64, batch_size=8, width=100000, seed=0, num_classes=10, x=x, labels=labels)
    recs = [_with_threads(n, lambda: reconstruct(obs, TensorConfig())) for n in threads]
    scores = [score_query(r.x, r.labels, truth, symmetric=False) for r in recs]
    rec, sc = recs[0], scores[0]
    paper = score_query(rec.x_tensor, rec.labels, truth, symmetric=False)
    rec_img = dg.normalization.denormalize(rec.x.float().view(-1, *dg.image_shape)).clamp(0, 1)
    p = [float(psnr(rec_img[j : j + 1], imgs[i : i + 1])) for i, j in enumerate(sc.order)]
    digits = {
        "d": 64,
        "B": 8,
        "m": 100000,
        "min_cos": min(sc.cos),
        "mean_cos": sum(sc.cos) / 8,
        "max_rel_error": max(sc.rel_error),
        "tensor_min_cos": min(paper.cos),
        "tensor_max_rel_error": max(paper.rel_error),
        "psnr": p,
        "labels_ok": sum(sc.labels_ok),
        "noise": rec.noise,
        "max_dcos_threads": max(abs(x - y) for o in scores[1:] for x, y in zip(o.cos, sc.cos)),
    }
    log(f"tensor digits: min cos {min(sc.cos):.4f}, PSNR {min(p):.1f}–{max(p):.1f}, labels {sum(sc.labels_ok)}/8")
    return {
        "vs_width": vs_m,
        "vs_batch": vs_b,
        "d100": big,
        "digits": digits,
        "threads": threads,
        "images": {"true": imgs, "recon": rec_img[sc.order]},
        "symmetry": TENSOR_SYMMETRY,
        "target": "every sample cosine > 0.99 for d = 20–100, B ≤ d/2, m in the paper's range; rows reproduce "
        "at 1 and 2 threads to |Δcos| ≤ 1e-3; where min cos ≥ 0.999 the relative error ≤ 0.05",
        "paper_numbers": "not available to us (PAPERS.md §3: experiments and width rate uncertain); "
        "PAPERS.md's own check: d=20, B=5, tanh: min |cos| ≥ 0.987 at m = 2e4, ≥ 0.998 at 2e5",
    }


def check_tensor(path: Path) -> int:
    """Reruns :data:`CHECK_ROWS` at 1 and 2 threads against the committed tensor rows; 1 on any mismatch
    (a number off by more than :data:`CHECK_TOL`, a label count changed, or |Δcos| between threads > 1e-3)."""
    committed = json.loads(path.read_text())["tensor"]
    rows = {(r["d"], r["B"], r["m"], r["seed"]): r for r in committed["vs_width"] + committed["vs_batch"]}
    bad = 0
    for key in CHECK_ROWS:
        new, old = tensor_row(*key, threads=[1, 2]), rows[key]
        if ("error" in new) != ("error" in old) or not new["reproduces"]:
            bad += 1
            log(
                f"MISMATCH {key}: {new.get('error') or 'answered'} vs committed {old.get('error') or 'answered'}; "
                f"reproduces at 1 and 2 threads: {new['reproduces']}"
            )
            continue
        if "error" in new:
            continue
        for k, tol in CHECK_TOL.items():
            if abs(new[k] - old[k]) > tol:
                bad += 1
                log(f"MISMATCH {key} {k}: {new[k]:.5f} vs committed {old[k]:.5f} (tolerance {tol})")
        if new["labels_ok"] != old["labels_ok"]:
            bad += 1
            log(f"MISMATCH {key} labels_ok: {new['labels_ok']} vs committed {old['labels_ok']}")
    log(f"tensor check: {len(CHECK_ROWS)} rows, {bad} mismatches (tolerances {CHECK_TOL}, labels exact)")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------------
RANKED = ("rgap", "inverting_gradients")


def matching_distance(obs, res) -> float:
    """The cosine gradient-matching distance of an attack's output (labels it used): what an attacker can
    compare across attacks without the ground truth."""
    from gradleak.attacks.matching import MatchingConfig, MatchingProblem

    problem = MatchingProblem(obs, torch.tensor(res.labels), MatchingConfig(distance="cosine"))
    x = obs.normalization.normalize(res.images) if obs.normalization is not None else res.images
    return float(problem.objective(x, autograd=True)[1])


def ranking_row(name: str, its: int, reuse: dict) -> dict:
    """COPA analysis of ``name`` and each ranked attack's PSNR; the attacker's pick is the output with the
    lower matching distance (never the higher PSNR)."""
    from gradleak.analyze import analyze_model
    from gradleak.attacks import ATTACKS
    from gradleak.errors import UnsupportedError
    from gradleak.metrics import score_images
    from gradleak.scenario import Scenario, simulate

    # the pre-0.2 defaults (distinct labels, train-mode BN), kept so the committed rows reproduce
    obs, truth = simulate(Scenario(model=name, dataset="photos", seed=0, unique_labels=True, bn_mode="train"))
    an = analyze_model(obs.model, obs.input_shape, obs.num_classes, name=name)
    row = {
        "model": name,
        "copa_index": an.copa_index,
        "rgap_rank_index": an.rgap_rank_index,
        "analysis_exact": an.exact,
        "analysis_seconds": an.seconds,
    }
    for att, kw in (("rgap", {}), ("inverting_gradients", {"iterations": its})):
        if att == "rgap" and name in reuse:
            row[att] = {k: reuse[name][k] for k in ("psnr", "ssim", "seconds")}  # no matching distance kept
            continue
        try:
            a = ATTACKS.get(att)(**kw)
            a.check(obs)
            res = a.run(obs, generator=torch.Generator().manual_seed(0))
            s = score_images(res.images, truth.images)
            row[att] = {"psnr": s.psnr[0], "ssim": s.ssim[0], "seconds": res.seconds}
            row[att]["matching_distance"] = matching_distance(obs, res)
        except UnsupportedError as e:
            row[att] = {"unsupported": e.problems}
    dist = {a: row[a]["matching_distance"] for a in RANKED if "matching_distance" in row[a]}
    ran = [a for a in RANKED if "psnr" in row[a]]
    if len(dist) == len(ran) and ran:
        row["attacker_pick"] = min(dist, key=dist.__getitem__)
    return row


def ranking_stats(rows: list[dict]) -> dict:
    """Spearman(COPA, PSNR) per attack, and for the attacker's pick where every row has one."""
    from scipy.stats import spearmanr

    out = {}
    series = {a: [(r["copa_index"], r[a]["psnr"]) for r in rows if "psnr" in r[a]] for a in RANKED}
    if all("attacker_pick" in r for r in rows):
        series["attacker_pick"] = [(r["copa_index"], r[r["attacker_pick"]]["psnr"]) for r in rows]
    for k, pts in series.items():
        rho = spearmanr([c for c, _ in pts], [p for _, p in pts])
        out[k] = {"rho": float(rho.statistic), "p": float(rho.pvalue), "models": len(pts)}
    return out


def bench_ranking(quick: bool, previous: dict | None = None) -> dict:
    models = ["cnn6", "cnn6-d", "lenet", "convnet", "resnet18"]
    its = 100 if quick else 200
    reuse = {}  # the layer-wise section ran R-GAP on the same scenarios (same seed → same init/data)
    for r in (previous or {}).get("rows", []):
        if r["seed"] == 0 and r["width2"] in (36, 20):
            reuse["cnn6" if r["width2"] == 36 else "cnn6-d"] = r["rgap"]
    rows = []
    for name in models:
        rows.append(ranking_row(name, its, reuse))
        r = rows[-1]
        log(
            f"ranking {name}: COPA {r['copa_index']} (exact={r['analysis_exact']}), pick {r.get('attacker_pick')} "
            f"[rgap {r['rgap'].get('psnr')}, IG {r['inverting_gradients'].get('psnr')}]"
        )
    return {
        "rows": rows,
        "ig_iterations": its,
        "spearman_copa_vs_psnr": ranking_stats(rows),
        "note": "higher COPA (closer to 0) should mean more leakage → positive rho expected; no selection by PSNR",
    }


CHECK_MODEL, CHECK_PSNR_TOL = "lenet", 0.5  # --check: the ranking row rerun; COPA exact, PSNR within 0.5 dB
#: or both at least this: a near-exact recovery, whose residual is the floating-point error of an ill-conditioned
#: solve and differs between CPUs (R-GAP on LeNet: 49.98 dB committed, 53.03 dB on another 2-core build machine)
CHECK_EXACT_PSNR = 40.0


def psnr_agrees(new: float, old: float) -> bool:
    """The check's PSNR test: within CHECK_PSNR_TOL, or both near-exact (≥ CHECK_EXACT_PSNR)."""
    return abs(new - old) <= CHECK_PSNR_TOL or min(new, old) >= CHECK_EXACT_PSNR


def check(path: Path) -> int:
    """Rerun the ranking row of CHECK_MODEL (seed 0) and compare with the committed one."""
    results = json.loads(path.read_text())
    rk = results["ranking"]
    old = next(r for r in rk["rows"] if r["model"] == CHECK_MODEL)
    new = ranking_row(CHECK_MODEL, rk["ig_iterations"], {})
    bad = [] if new["copa_index"] == old["copa_index"] else [f"COPA {new['copa_index']} vs {old['copa_index']}"]
    for a in RANKED:
        if ("psnr" in new[a]) != ("psnr" in old[a]) or not psnr_agrees(new[a].get("psnr", 0), old[a].get("psnr", 0)):
            bad.append(f"{a} PSNR {new[a].get('psnr')} vs {old[a].get('psnr')}")
    print(
        f"check ranking {CHECK_MODEL}:",
        "OK" if not bad else "MISMATCH: " + "; ".join(bad),
        f"(COPA exact, PSNR within {CHECK_PSNR_TOL} dB or both >= {CHECK_EXACT_PSNR:g} dB)",
    )
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------------
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    t = results.get("tensor")
    if t:
        ax = axes[0]
        ms = sorted({r["m"] for r in t["vs_width"] if "min_cos" in r})
        for key, lab in (("tensor_min_cos", "paper's estimate"), ("min_cos", "after the polish")):
            ax.plot(
                ms,
                [max(1 - r[key] for r in t["vs_width"] if r["m"] == m and "min_cos" in r) for m in ms],
                "o-",
                label=f"1 − min cos, worst seed ({lab})",
            )
        ax.axhline(0.01, ls="--", c="k", lw=0.8, label="target cos 0.99")
        ax.set(xscale="log", yscale="log", xlabel="width m", title="tensor: d=20, B=5, tanh")
        ax.legend(fontsize=7)
        ax = axes[1]
        for d_, rows in (("50, m=1e5", t["vs_batch"]), ("100, m=1e5", t["d100"])):
            bs = sorted({r["B"] for r in rows if "min_cos" in r})
            ax.plot(
                bs,
                [max(1 - r["tensor_min_cos"] for r in rows if r["B"] == b and "min_cos" in r) for b in bs],
                "o-",
                label=f"d={d_} (paper's estimate; refused B not shown)",
            )
        ax.axhline(0.01, ls="--", c="k", lw=0.8)
        ax.set(yscale="log", xlabel="batch B", ylabel="1 − min cos (worst seed)", title="tensor: error vs B")
        ax.legend(fontsize=7)
    lw = results.get("layerwise")
    if lw:
        ax = axes[2]
        rows = lw["rows"]
        ax.scatter([r["copa_index"] for r in rows], [r["rgap"]["psnr"] for r in rows], label="R-GAP")
        pts = [(r["copa_index"], r["layerwise"]["psnr"]) for r in rows if "layerwise" in r]
        if pts:
            ax.scatter(*zip(*pts), marker="x", label="layer-wise + pull-back")
        for r in rows:
            ax.annotate(str(r["width2"]), (r["copa_index"], r["rgap"]["psnr"]), fontsize=7)
        ax.axhline(40, ls="--", c="k", lw=0.8)
        ax.set(xlabel="COPA index (CNN6, conv2 width annotated)", ylabel="PSNR (dB)", title="layer-wise at 32×32")
        ax.legend(fontsize=7)
    rk = results.get("ranking")
    if rk:
        ax = axes[3]
        for att, marker in zip(RANKED, "ox"):
            pts = [
                (-math.log10(1 - r["copa_index"]), r[att]["psnr"], r["model"]) for r in rk["rows"] if "psnr" in r[att]
            ]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=att)
            for x, y, m in pts:
                ax.annotate(m, (x, y), fontsize=7)
        ax.set(xlabel="−log10(1 − COPA index)", ylabel="PSNR (dB)", title="ranking: each attack's PSNR")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensor_targets(t: dict) -> str:
    """The issue's targets, computed from the rows: thread reproducibility and the error where cos ≥ 0.999."""
    rows = t["vs_width"] + t["vs_batch"] + t["d100"]
    unrep = [r for r in rows if not r["reproduces"]]
    refused = [r for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r and r["min_cos"] >= 0.999]
    worst = max((r["max_rel_error"] for r in good), default=float("nan"))
    worst_scale = max((r["max_scale_error"] for r in good), default=float("nan"))
    rep = (
        f"all {len(rows)} rows reproduce at 1 and 2 threads (|Δcos| ≤ 1e-3 of the output and the paper's "
        f"estimate, or the same refusal at both: {len(refused)} rows)"
        if not unrep
        else f"{len(rows) - len(unrep)}/{len(rows)} rows reproduce; not: "
        + ", ".join(f"d={r['d']} B={r['B']} seed={r['seed']}" for r in unrep)
    )
    paper_good = [r for r in rows if "error" not in r and r["tensor_min_cos"] >= 0.999]
    return (
        f"{rep}; where min cos ≥ 0.999 ({len(good)} rows) the worst relative error is {worst:.2e} "
        f"(target ≤ 0.05) and the worst scale error {worst_scale:.2e}. The paper's estimate alone (no polish): "
        f"min cos ≥ 0.999 in {len(paper_good)} rows, worst relative error there "
        f"{max((r['tensor_max_rel_error'] for r in paper_good), default=float('nan')):.3f}."
    )


def markdown(results: dict) -> str:
    out = [
        "# Analytic attacks and leakage analysis — benchmark (issue 7)",
        "",
        f"Total wall time {results['seconds']:.0f} s on this 2-core machine, which other jobs loaded heavily "
        "during the run (load averages per section in results.json: wall times are inflated several-fold; "
        "`cpu_seconds` per section is this process's CPU time).",
        "",
    ]
    fc = results.get("fc")
    if fc:
        out += [
            "## Exact FC recovery (MLP, first layer with bias)",
            "",
            "| data | B | width | seed | exact | min PSNR of exact (dB) | flagged exact but wrong |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in fc["rows"]:
            out.append(
                f"| {r['data']} | {r['batch_size']} | {r['width']} | {r['seed']} | {r['exact_count']}/"
                f"{r['batch_size']} | {r['min_psnr_exact']} | {r['false_exact']} |"
            )
        out.append("")
    lw = results.get("layerwise")
    if lw:
        out += [
            "## Layer-wise (CNN6 family, 32×32 photos, B=1)",
            "",
            "| conv2 width | seed | conv2 rank / unknowns | COPA | R-GAP PSNR | layer-wise+pull-back PSNR | R-GAP s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in lw["rows"]:
            lwp = f"{r['layerwise']['psnr']:.1f}" if "layerwise" in r else "= R-GAP"
            out.append(
                f"| {r['width2']} | {r['seed']} | {r['conv2_rank']} / {r['conv2_unknowns']} | "
                f"{r['copa_index']} | {r['rgap']['psnr']:.1f} | {lwp} | {r['rgap']['seconds']:.0f} |"
            )
        out.append("")
    t = results.get("tensor")
    if t:
        out += [
            "## Tensor decomposition (two-layer tanh, random Gaussian parameters, 2 classes)",
            "",
            t["symmetry"],
            "",
            f"Each row was run at {t['threads']} torch threads; numbers are the first count's, and the last "
            "column is the largest |Δcos| of any sample between the counts. Scale error: |‖x̂‖/‖x‖ − 1|; "
            "rel. error: ‖x̂ − x‖/‖x‖ (both the worst sample).",
            "",
            "Columns *paper's estimate*: the tensor decomposition and norm fit alone (polish_steps=0); the "
            "others: the attack's output after its gradient-matching polish (a deviation, see `tensor.py`). "
            "*refused*: the fit check (residual > 1.5× the tensor's noise) declined the batch at every thread count.",
            "",
            "| d | B | m | seed | paper's estimate: min cos | rel. error | min cos | mean cos | max rel. error | "
            "max scale error | labels | noise | fit residual | s | max abs Δcos (threads) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in t["vs_width"] + t["vs_batch"] + t["d100"]:
            if "error" in r:
                out.append(
                    f"| {r['d']} | {r['B']} | {r['m']} | {r['seed']} | refused at threads {r['refused_at']}: "
                    f"{r['error'].split(': ', 1)[-1][:110]} |" + " |" * 10
                )
                continue
            out.append(
                f"| {r['d']} | {r['B']} | {r['m']} | {r['seed']} | {r['tensor_min_cos']:.4f} | "
                f"{r['tensor_max_rel_error']:.3f} | {r['min_cos']:.6f} | {r['mean_cos']:.6f} | "
                f"{r['max_rel_error']:.1e} | {r['max_scale_error']:.1e} | {r['labels_ok']}/{r['B']} | "
                f"{r['noise']:.3f} | {r['fit_residual']:.3f} | {r['seconds']:.1f} | {r['max_dcos_threads']:.1e} |"
            )
        dg = t["digits"]
        out += [
            "",
            f"Digits (d=64, B=8, m=1e5, 10 classes, signed cosine): min cos {dg['min_cos']:.4f}, mean "
            f"{dg['mean_cos']:.4f}, max rel. error {dg['max_rel_error']:.3f} (paper's estimate: min cos "
            f"{dg['tensor_min_cos']:.4f}, rel. error {dg['tensor_max_rel_error']:.3f}), PSNR "
            f"{min(dg['psnr']):.1f}–{max(dg['psnr']):.1f} dB, labels {dg['labels_ok']}/8, max |Δcos| between "
            f"thread counts {dg['max_dcos_threads']:.1e}.",
            "",
            "Done-when targets: " + _tensor_targets(t),
            "",
            f"Paper's numbers: {t['paper_numbers']}.",
            "",
            "`python benchmarks/analytic/run.py --check` reruns d=20, B=5 at (m, seed) = "
            + ", ".join(f"({m}, {sd})" for _, _, m, sd in CHECK_ROWS)
            + f" at 1 and 2 threads and fails on a difference above {CHECK_TOL}, any label change or a "
            "|Δcos| between thread counts above 1e-3.",
            "",
        ]
    rk = results.get("ranking")
    if rk:
        out += [
            "## `analyze` vs measured reconstruction (32×32 photos, B=1, untrained)",
            "",
            "Both attacks' PSNR side by side; no column takes the better PSNR (that needs the ground truth). "
            "An attacker picks by the lower gradient-matching distance (cosine, recorded by runs from issue 16 "
            "on; `n/a` where a row predates it or R-GAP's numbers were reused from the layer-wise section).",
            "",
            f"| model | COPA index | rank index | exact | R-GAP PSNR | IG ({rk['ig_iterations']} it) PSNR "
            "| attacker's pick |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rk["rows"]:
            rg = r["rgap"].get("psnr")
            ig = r["inverting_gradients"].get("psnr")
            out.append(
                f"| {r['model']} | {r['copa_index']} | {r['rgap_rank_index']} | {r['analysis_exact']} | "
                f"{'n/a' if rg is None else f'{rg:.1f}'} | {'n/a' if ig is None else f'{ig:.1f}'} | "
                f"{r.get('attacker_pick', 'n/a')} |"
            )
        stats = ranking_stats(rk["rows"])
        out += [
            "",
            "Spearman(COPA, PSNR): "
            + "; ".join(f"{k} ρ = {v['rho']:.2f} (p = {v['p']:.2f}, {v['models']} models)" for k, v in stats.items())
            + ".",
            "",
        ]
        lw20 = [r for r in (lw or {}).get("rows", []) if r["width2"] == 20 and "layerwise" in r]
        if lw20:
            out += [
                f"The COPA index predicts the per-layer method (R-GAP). The layer-wise variant with the pull-back "
                f"constraint reaches {lw20[0]['layerwise']['psnr']:.1f} dB on CNN6-d (table above): extra "
                "constraints from the layer below can cover a small deficiency, which the index does not count.",
                "",
            ]
    out += [
        "## Time per section",
        "",
        "| section | wall s | CPU s | load average (1 min) start → end |",
        "|---|---|---|---|",
    ]
    for k in ("fc", "layerwise", "tensor", "ranking"):
        if k in results:
            e = results[k].get("environment", {})
            la = f"{e.get('load_average_start', ['?'])[0]} → {e.get('load_average_end', ['?'])[0]}" if e else "n/a"
            cpu = results[k].get("cpu_seconds")
            out.append(f"| {k} | {results[k]['seconds']:.0f} | {'n/a' if cpu is None else f'{cpu:.0f}'} | {la} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", default=["fc", "layerwise", "tensor", "ranking"])
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="tensor: torch thread counts to compare")
    p.add_argument(
        "--check",
        action="store_true",
        help="rerun one ranking row and a seeded subset of the tensor rows; exit 1 if off",
    )
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.check:
        return max(check(out / "results.json"), check_tensor(out / "results.json"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["environment"] = machine()
    t0 = time.perf_counter()
    fns = {"fc": bench_fc, "layerwise": bench_layerwise, "tensor": bench_tensor, "ranking": bench_ranking}
    for name in a.only:
        ts, cpu = time.perf_counter(), time.process_time()
        section_env = machine()
        if name == "ranking":
            res = bench_ranking(a.quick, results.get("layerwise"))
        else:
            res = bench_tensor(a.quick, a.threads) if name == "tensor" else fns[name](a.quick)
        if name == "tensor":
            from gradleak.report import save_grid

            im = res.pop("images")
            save_grid(out / "tensor_digits.png", im["true"], [im["recon"]])
        res["seconds"] = time.perf_counter() - ts
        res["cpu_seconds"] = time.process_time() - cpu
        res["environment"] = {**section_env, "load_average_end": os.getloadavg()}
        res["quick"] = a.quick
        results[name] = res
        path.write_text(json.dumps(results, indent=1, default=float))
    results["seconds"] = sum(results[k].get("seconds", 0) for k in fns if k in results)
    results["environment"]["load_average_end"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=1, default=float))
    plot(results, out / "analytic.png")
    (out / "results.md").write_text(markdown(results))
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
