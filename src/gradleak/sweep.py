"""Privacy–utility sweep: defenses × strengths × attacks over several clients, in parallel.

For every defense setting (and an undefended baseline) the sweep measures

- *leakage* — for ``clients`` simulated clients (seeds), the label accuracy of label recovery and the
  PSNR/SSIM of each attack's reconstruction of the client's batch (the model at initialisation, the
  first FL round), and how often each attack identifies a client image among ``candidates`` equally likely
  ones (:mod:`gradleak.metrics.candidates`) — beside the bound on *any* attack's success that a DP defense
  gives at that prior (:mod:`gradleak.defenses.bounds`);
- *utility* — the test accuracy of the same architecture after a short training (``train_steps``
  FL steps of one client with ``train_batch`` samples, the defense applied to every update exactly
  as in the audit; DP-SGD and DP-FedAvg also report the ε of the whole training).

With ``victim_checkpoints`` (e.g. ``(0, 100, 1000)``) the training of the server's model is one more axis of the
grid: the model is trained once (:func:`gradleak.over_training.save_checkpoints`, on the train part of the data) and
its weights saved at each checkpoint; every leakage cell loads one checkpoint's weights (it trains nothing) and its
client draws from the held-out part. Utility is measured as without checkpoints. The results then name each
cell's checkpoint, and :func:`write_sweep` adds a plot of leakage against training steps per setting and attack.

Cells run in parallel processes — Ray when installed (``backend="auto"``), else
``concurrent.futures.ProcessPoolExecutor`` — and the result is one JSON, a privacy–utility plot and an
HTML page. Grid specs take ``|``-separated alternatives: ``dpsgd:noise=0.5|1|2,clip=1`` is three
settings; ``smooth:EPS`` and ``mixup:ALPHA`` sweep the client's label augmentations.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .auditing import DEFAULT_ATTACK, AuditPlan, audit_scenario, make_attacks
from .defenses import DEFENSES, Defense, LabelSmoothing, Mixup, dp_guarantees, parse_defense
from .errors import InputError
from .over_training import (
    SavedCheckpoint,
    accuracy_panel,
    audit_checkpoint,
    check_checkpoints,
    load_checkpoint,
    save_checkpoints,
)
from .protocols import FedAvg, FedSGD
from .scenario import Scenario

log = logging.getLogger(__name__)
SCHEMA = 1
NONE = "none"
AUGMENTATIONS = ("smooth", "mixup")
#: families whose defense gets *weaker* as their main value grows (all others get stronger)
WEAKER_WITH_LARGER = {"quantize", "clip"}

DEFAULT_GRID = ("noise:0.003|0.01|0.03|0.1", "dpsgd:noise=0.3|1|3,clip=1", "soteria:0.5|0.9", "compress:0.9|0.99|0.999")


def expand_grid(spec: str) -> list[str]:
    """``name:k=a|b,j=c`` → ``["name:k=a,j=c", "name:k=b,j=c"]`` (cartesian over ``|`` alternatives)."""
    name, _, rest = spec.strip().partition(":")
    if not rest:
        return [name]
    parts = []
    for p in rest.split(","):
        key, eq, values = p.rpartition("=")
        parts.append([f"{key}{eq}{v}" for v in values.split("|")])
    out = []
    for combo in itertools.product(*parts):
        out.append(f"{name}:{','.join(combo)}")
    return out


def check_setting(spec: str) -> None:
    """Raise :class:`InputError` now for a setting a worker could not build."""
    if spec == NONE:
        return
    name, _, value = spec.partition(":")
    if name in AUGMENTATIONS:
        try:
            v = float(value)
        except ValueError:
            raise InputError(f"{spec!r}: {name} takes one number, e.g. '{name}:0.1'") from None
        LabelSmoothing(v) if name == "smooth" else Mixup(v)
        return
    parse_defense(spec)


def strength(spec: str) -> tuple[str, float]:
    """The defense family and a number that grows with its strength (for plotting and trends)."""
    if spec == NONE:
        return NONE, 0.0
    name, _, rest = spec.partition(":")
    first = rest.split(",")[0]
    value = float(first.partition("=")[2] if "=" in first else first)
    main = None if name in AUGMENTATIONS else DEFENSES.get(name).main
    if "=" in first and main is not None and first.partition("=")[0] != main:
        value = float("nan")
    return name, (-value if name in WEAKER_WITH_LARGER else value)


def default_sweep_scenario() -> Scenario:
    return Scenario(model="mlp", model_kwargs={"width": 64}, dataset="digits")


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """What the sweep measures (defaults: the committed ``benchmarks/sweep`` run).

    ``scenario`` is the attacked client's round without defenses (client ``c`` runs it with seed
    ``scenario.seed + 1 + c``); the utility model is trained from ``scenario.seed``. ``iterations=None``
    leaves each attack at its own default budget. ``candidates`` is K, the size of the candidate set each client
    image is identified in (the prior κ = 1/K of the reconstruction bound). ``victim_checkpoints``: the training
    steps of the server's model at which leakage is measured (see the module docstring; empty: its initialisation,
    or ``scenario.train_steps`` trained in every cell).
    """

    scenario: Scenario = field(default_factory=default_sweep_scenario)
    settings: tuple[str, ...] = tuple(s for g in DEFAULT_GRID for s in expand_grid(g))
    clients: int = 4
    attacks: tuple[str, ...] = (DEFAULT_ATTACK,)
    iterations: int | None = None
    label_methods: tuple[str, ...] = ("auto",)
    train_steps: int = 300
    train_batch: int = 32
    train_lr: float = 0.1
    test_fraction: float = 0.25
    candidates: int = 10
    victim_checkpoints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise InputError(f"clients must be >= 1, got {self.clients}")
        if self.candidates < 2:
            raise InputError(f"candidates must be >= 2 (the client's image and a decoy), got {self.candidates}")
        if self.train_steps < 0 or self.train_batch < 1 or not self.train_lr > 0:
            raise InputError("train_steps >= 0, train_batch >= 1 and train_lr > 0 are required")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.scenario.defenses or self.scenario.label_smoothing or self.scenario.mixup:
            raise InputError("the sweep's scenario must be undefended: give defenses and augmentations as settings")
        for s in self.settings:
            check_setting(s)
        make_attacks(self.attacks, iterations=self.iterations)  # unknown names or settings fail now
        if self.victim_checkpoints:
            check_checkpoints(self.scenario, self.victim_checkpoints)

    def all_settings(self) -> list[str]:
        return [NONE] + [s for s in self.settings if s != NONE]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenario"] = self.scenario.to_json()
        return d


def _split(spec: str) -> tuple[tuple[Defense, ...], float, float | None]:
    """A setting → (defenses, label smoothing, mixup alpha)."""
    if spec == NONE:
        return (), 0.0, None
    name, _, value = spec.partition(":")
    if name == "smooth":
        return (), float(value), None
    if name == "mixup":
        return (), 0.0, float(value)
    return (parse_defense(spec),), 0.0, None


# -- the two kinds of cell (module-level functions: they run in worker processes) -----------------


def leakage_cell(
    plan: SweepPlan, setting: str, client: int, checkpoint: SavedCheckpoint | None = None
) -> dict[str, Any]:
    """Audit one simulated client under one setting (on the server's model at ``checkpoint``, if given); scores
    against its batch, and identification of each of its images among ``plan.candidates`` (decoys drawn with the
    client's seed) beside the DP bound at that prior."""
    from .data import load_dataset
    from .metrics import candidate_success, draw_decoys

    torch.set_num_threads(1)
    defenses, smooth, mixup = _split(setting)
    sc = replace(
        plan.scenario, defenses=defenses, label_smoothing=smooth, mixup=mixup, seed=plan.scenario.seed + 1 + client
    )
    t0 = time.perf_counter()
    audit_plan = AuditPlan(
        label_methods=plan.label_methods,
        attacks=make_attacks(plan.attacks, iterations=plan.iterations),
        seed=plan.scenario.seed,
    )
    data = load_dataset(sc.dataset, size=sc.image_size)
    if checkpoint is None:
        result, truth = audit_scenario(sc, audit_plan)
    else:
        done = audit_checkpoint(sc, audit_plan, load_checkpoint(sc, checkpoint, data))
        result, truth = done.result, done.truth
    pool = data.images
    index = draw_decoys(pool, truth.images, plan.candidates - 1, generator=torch.Generator().manual_seed(sc.seed))
    decoys = pool[index]
    kappa = 1 / plan.candidates
    bounds = [g.bound(kappa) for g in dp_guarantees(result.setting["defenses"])]
    chosen = result.labels.chosen
    row: dict[str, Any] = {
        "setting": setting,
        "client": client,
        "checkpoint": None if checkpoint is None else checkpoint.steps,
        "label_accuracy": None if chosen is None else chosen.accuracy,
        "label_method": None if chosen is None else chosen.method,
        "defense_records": result.setting["defenses"],
        "kappa": kappa,
        "bound": min(bounds) if bounds else None,
        "attacks": {},
    }
    for spec, run in zip(plan.attacks, result.attacks):  # keyed as the plan names them (a name or NAME:KEY=VALUE)
        if run.result is None or run.scores is None:
            row["attacks"][spec] = {"error": run.error}
            continue
        hits = candidate_success(run.result.images, truth.images, decoys)
        row["attacks"][spec] = {
            "psnr": run.scores.mean_psnr,
            "ssim": run.scores.mean_ssim,
            "candidate_success": sum(hits) / len(hits),
            "seconds": run.result.seconds,
            "error": None,
        }
    row["seconds"] = time.perf_counter() - t0
    return row


def utility_cell(plan: SweepPlan, setting: str) -> dict[str, Any]:
    """Train the plan's model for ``train_steps`` defended FL steps; test accuracy on held-out data."""
    from .client import aggregate_round, client_round
    from .data import load_dataset
    from .defenses import DPSGD, DPFedAvg, dp_epsilon
    from .models import ModelSpec

    torch.set_num_threads(1)
    sc = plan.scenario
    t0 = time.perf_counter()
    defenses, smooth, mixup = _split(setting)
    data = load_dataset(sc.dataset, size=sc.image_size)
    gen = torch.Generator().manual_seed(sc.seed)
    perm = torch.randperm(len(data), generator=gen)
    n_test = int(len(data) * plan.test_fraction)
    test, train = data.subset(perm[:n_test]), data.subset(perm[n_test:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sc.seed)
        model = ModelSpec(sc.model, data.num_classes, data.image_shape, dict(sc.model_kwargs)).build().train()
    n_cls = data.num_classes
    b = min(plan.train_batch, len(train))
    for _ in range(plan.train_steps):
        idx = torch.randperm(len(train), generator=gen)[: 2 * b if mixup else b]
        x, y = train.images[idx], train.labels[idx]
        targets: torch.Tensor = y
        if mixup:
            x, targets, _ = Mixup(mixup).mix(x[:b], y[:b], x[b:], y[b:], n_cls, generator=gen)
        elif smooth:
            targets = LabelSmoothing(smooth).targets(y, n_cls)
        update, records = client_round(
            model, sc.protocol, data.normalization.normalize(x), targets, defenses, generator=gen
        )
        update, _ = aggregate_round([update], records, defenses, generator=gen)
        step = -plan.train_lr if isinstance(sc.protocol, FedSGD) else 1.0
        with torch.no_grad():
            for k, p in model.named_parameters():
                if k in update:
                    p.add_(update[k], alpha=step)
    model.eval()
    with torch.no_grad():
        pred = model(data.normalization.normalize(test.images)).argmax(1)
    acc = float((pred == test.labels).float().mean())
    out: dict[str, Any] = {
        "setting": setting,
        "test_accuracy": acc,
        "steps": plan.train_steps,
        "batch": b,
        "seconds": time.perf_counter() - t0,
        "epsilon": None,
    }
    dp = [d for d in defenses if isinstance(d, DPSGD)]
    if dp:
        steps = plan.train_steps * (sc.protocol.local_steps if isinstance(sc.protocol, FedAvg) else 1)
        eps = dp_epsilon(dp[0].noise, b / len(train), steps, dp[0].delta)
        out["epsilon"] = eps if math.isfinite(eps) else None
        out["epsilon_note"] = (
            f"RDP accountant, sampling rate {b}/{len(train)}, {steps} steps, "
            f"delta {dp[0].delta} (batches drawn without replacement, accounted as Poisson)"
        )
    fed = [d for d in defenses if isinstance(d, DPFedAvg)]
    if fed:
        eps = dp_epsilon(fed[0].noise, 1.0, plan.train_steps, fed[0].delta)
        out["epsilon"] = eps if math.isfinite(eps) else None
        out["epsilon_note"] = (
            f"RDP accountant, user level: the one client in all {plan.train_steps} rounds, delta {fed[0].delta}"
        )
    return out


# -- running cells ---------------------------------------------------------------------------------


def _call(job: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]) -> dict[str, Any]:
    fn, args = job
    return fn(*args)


def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "ray", "process", "serial"):
        raise InputError(f"unknown backend {backend!r}; use auto, ray, process or serial")
    if backend == "auto":
        try:
            import ray  # noqa: F401
        except ImportError:
            return "process"
        return "ray"
    return backend


def run_jobs(
    jobs: Sequence[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]],
    *,
    backend: str = "auto",
    workers: int | None = None,
    on_done: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict[str, Any]]:
    """Run ``(function, args)`` jobs in parallel; results in job order."""
    backend = resolve_backend(backend)
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    total = len(jobs)
    if backend == "serial" or workers == 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(_call(job))
            on_done(i + 1, total)
        return out
    if backend == "ray":
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024**2)
        try:
            remote = ray.remote(num_cpus=1)(_call)
            refs = [remote.remote(job) for job in jobs]
            results: dict[Any, dict[str, Any]] = {}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                results[ready[0]] = ray.get(ready[0])
                on_done(len(results), total)
            return [results[r] for r in refs]
        finally:
            if started:
                ray.shutdown()
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(_call, job) for job in jobs]
        out = []
        for i, f in enumerate(futures):
            out.append(f.result())
            on_done(i + 1, total)
        return out


def run_sweep(
    plan: SweepPlan,
    *,
    backend: str = "auto",
    workers: int | None = None,
    on_done: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Train the server's model to its checkpoints (if any), run every cell and summarise; returns the results dict
    (written by :func:`write_sweep`)."""
    t0 = time.perf_counter()
    settings = plan.all_settings()
    with tempfile.TemporaryDirectory() as folder:
        saved: list[SavedCheckpoint] = []
        if plan.victim_checkpoints:
            saved = save_checkpoints(plan.scenario, plan.victim_checkpoints, folder)
        jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = []
        jobs += [(utility_cell, (plan, s)) for s in settings]  # longest first
        points: list[SavedCheckpoint | None] = [*saved] or [None]
        jobs += [(leakage_cell, (plan, s, c, cp)) for cp in points for s in settings for c in range(plan.clients)]
        results = run_jobs(jobs, backend=backend, workers=workers, on_done=on_done)
    utility = results[: len(settings)]
    cells = results[len(settings) :]
    return {
        "schema": SCHEMA,
        "kind": "sweep",
        "gradleak_version": __version__,
        "config": plan.to_json(),
        "backend": resolve_backend(backend),
        "workers": workers,
        "seconds": time.perf_counter() - t0,
        "checkpoints": [{"steps": cp.steps, "training": cp.training.to_json()} for cp in saved],
        "summary": summarize(plan, settings, cells, utility),
        "utility": utility,
        "cells": cells,
    }


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else None


def summarize(
    plan: SweepPlan, settings: Sequence[str], cells: Sequence[dict[str, Any]], utility: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Per checkpoint (if any) and setting: mean leakage and utility; per checkpoint and family: whether the trends
    are monotone (keyed by the family, or ``"<family> at <N> steps"`` with checkpoints)."""
    util = {u["setting"]: u for u in utility}
    rows = []
    trends = {}
    for cp in plan.victim_checkpoints or (None,):
        chunk = []
        for s in settings:
            mine = [c for c in cells if c["setting"] == s and c["checkpoint"] == cp]
            fam, st = strength(s)
            row = {
                "setting": s,
                "checkpoint": cp,
                "family": fam,
                "strength": st,
                "test_accuracy": util[s]["test_accuracy"],
                "epsilon": util[s].get("epsilon"),
                "label_accuracy": _mean([c["label_accuracy"] for c in mine]),
                "kappa": 1 / plan.candidates,
                "bound": _mean([c.get("bound") for c in mine]),
                "attacks": {},
            }
            round_eps = [r.get("epsilon") for c in mine for r in c["defense_records"] if "epsilon" in r]
            if round_eps:
                row["epsilon_per_round"] = _mean(round_eps)
            for a in plan.attacks:
                ok = [c["attacks"][a] for c in mine if c["attacks"].get(a, {}).get("error") is None]
                row["attacks"][a] = {
                    "psnr": _mean([o["psnr"] for o in ok]),
                    "ssim": _mean([o["ssim"] for o in ok]),
                    "candidate_success": _mean([o.get("candidate_success") for o in ok]),
                    "n": len(ok),
                }
            chunk.append(row)
        rows += chunk
        for fam, t in family_trends(plan, chunk).items():
            trends[fam if cp is None else f"{fam} at {cp} steps"] = t
    return {"settings": rows, "trends": trends}


def family_trends(plan: SweepPlan, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family of ``rows`` (one checkpoint's): whether accuracy and leakage fall from no defense to its
    strongest setting."""
    trends = {}
    for fam in sorted({r["family"] for r in rows} - {NONE}):
        chain = sorted([r for r in rows if r["family"] == fam], key=lambda r: r["strength"])
        chain = [next(r for r in rows if r["family"] == NONE)] + chain

        def nonincreasing(vals: list[float | None], tol: float) -> bool:
            v = [x for x in vals if x is not None]
            return all(b <= a + tol for a, b in zip(v, v[1:]))

        trends[fam] = {
            "settings": [r["setting"] for r in chain],
            "accuracy_nonincreasing": nonincreasing([r["test_accuracy"] for r in chain], 0.01),
            "label_accuracy_nonincreasing": nonincreasing([r["label_accuracy"] for r in chain], 0.0),
            **{
                f"{a}_psnr_nonincreasing": nonincreasing([r["attacks"][a]["psnr"] for r in chain], 0.25)
                for a in plan.attacks
            },
        }
    return trends


# -- output ----------------------------------------------------------------------------------------


def plot_sweep(results: dict[str, Any], path: str | Path) -> Path:
    """Privacy–utility plot: attack PSNR and label accuracy against the defended model's test accuracy (one row of
    panels per checkpoint of the server's model, if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = results["summary"]["settings"]
    attacks = results["config"]["attacks"]
    fams = sorted({r["family"] for r in everything} - {NONE})
    steps = [r["checkpoint"] for r in everything if r["family"] == NONE]

    def psnr(a: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r["attacks"][a]["psnr"]

    panels = [(f"{a} PSNR (dB)", psnr(a)) for a in attacks]
    panels.append(("label accuracy", lambda r: r["label_accuracy"]))
    fig, axes = plt.subplots(len(steps), len(panels), figsize=(5.2 * len(panels), 4.2 * len(steps)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes_row, cp in zip(axes, steps):
        rows = [r for r in everything if r["checkpoint"] == cp]
        for ax, (title, get) in zip(axes_row, panels):
            plot_panel(ax, rows, fams, title, get, colors)
            if cp is not None:
                ax.set_title(f"server model after {cp} training steps", fontsize=9)
    axes[0][0].legend(fontsize=8)
    cfg = results["config"]
    sc = cfg["scenario"]
    fig.suptitle(
        f"privacy–utility: {sc['model']} on {sc['dataset']}, batch {sc['batch_size']}, "
        f"{cfg['clients']} clients, utility after {cfg['train_steps']} training steps",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_panel(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    fams: Sequence[str],
    title: str,
    get: Callable[[dict[str, Any]], Any],
    colors: Sequence[str],
) -> None:
    """One measure of one checkpoint's ``rows`` against test accuracy: each family's chain from no defense."""
    base = next(r for r in rows if r["family"] == NONE)
    for i, fam in enumerate(fams):
        chain = [base] + sorted([r for r in rows if r["family"] == fam], key=lambda r: r["strength"])
        pts = [(r["test_accuracy"], get(r), r["setting"]) for r in chain if get(r) is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[i % len(colors)], label=fam)
        for x, y, s in pts[1:]:
            ax.annotate(
                s.partition(":")[2].split(",")[0],
                (x, y),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
                color=colors[i % len(colors)],
            )
    if get(base) is not None:
        ax.plot([base["test_accuracy"]], [get(base)], "k*", markersize=12, label="no defense")
    ax.set_xlabel("defended model test accuracy")
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)


def markdown_table(results: dict[str, Any]) -> str:
    """One row per setting (and checkpoint of the server's model, in a first ``steps`` column, if any)."""
    attacks = results["config"]["attacks"]
    k = results["config"].get("candidates", 10)
    by_steps = bool(results.get("checkpoints"))  # sweeps written before checkpoints have none
    head = [
        *(["steps"] if by_steps else []),
        "setting",
        "test acc",
        "label acc",
        *[f"{a} PSNR" for a in attacks],
        *[f"{a} SSIM" for a in attacks],
        *[f"{a} success (1 in {k})" for a in attacks],
        f"bound (1 in {k})",
        "ε (training)",
        "ε (one round)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x: Any, d: int = 3) -> str:
        return "–" if x is None else f"{x:.{d}f}"

    for r in results["summary"]["settings"]:
        cells = [
            *([str(r["checkpoint"])] if by_steps else []),
            f"`{r['setting']}`",
            f(r["test_accuracy"]),
            f(r["label_accuracy"], 2),
            *[f(r["attacks"][a]["psnr"], 2) for a in attacks],
            *[f(r["attacks"][a]["ssim"]) for a in attacks],
            *[f(r["attacks"][a].get("candidate_success"), 2) for a in attacks],
            f(r.get("bound"), 3),
            f(r.get("epsilon"), 2),
            f(r.get("epsilon_per_round"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def threat_text(sc: dict[str, Any]) -> str:
    """The threat model of a scenario's JSON in words: the server, and the aggregation it sees."""
    server = sc.get("server")
    who = "honest server" if server is None else f"malicious server `{server['name']}`"
    clients = int(sc.get("clients", 1))
    return who + (f", secure aggregation of {clients} clients' updates" if clients > 1 else ", one client's update")


def success_text(cfg: dict[str, Any]) -> str:
    """What the success and bound columns mean."""
    k = cfg.get("candidates", 10)
    return (
        f"*Success*: the share of client images that are, among themselves and {k - 1} decoys drawn from the same "
        "data, the candidate nearest (pixel MSE) to one of the attack's reconstructions (chance 1/"
        f"{k}). *Bound*: for DP-SGD and DP-FedAvg settings, the most any attack can succeed at that prior against "
        "the round (Hayes et al. NeurIPS 2023, arXiv:2302.07225), for an informed adversary who knows everything "
        "but the protected example (DP-SGD) or client (DP-FedAvg)."
    )


def checkpoints_table(results: dict[str, Any]) -> str:
    """The server's model at each checkpoint: its accuracy on the train and held-out parts, and training time."""
    lines = ["| steps | train acc | held-out acc | training seconds (cumulative) |", "|---|---|---|---|"]
    for c in results["checkpoints"]:
        t = c["training"]
        lines.append(f"| {c['steps']} | {t['train_accuracy']:.3f} | {t['test_accuracy']:.3f} | {t['seconds']:.1f} |")
    return "\n".join(lines)


def plot_over_training(results: dict[str, Any], path: str | Path) -> Path:
    """Leakage against the server model's training steps: its accuracy, then label accuracy and each attack's PSNR
    and SSIM, one line per setting."""
    from .report.curves import Line, Panel, plot_curves

    rows = results["summary"]["settings"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cps = results["checkpoints"]

    def lines(get: Callable[[dict[str, Any]], Any]) -> list[Line]:
        return [
            Line(s, [(r["checkpoint"], get(r)) for r in rows if r["setting"] == s and get(r) is not None])
            for s in settings
        ]

    def measure(attack: str, key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r["attacks"][attack][key]

    panels = [
        accuracy_panel([(c["steps"], c["training"]) for c in cps]),
        Panel("label accuracy", lines(lambda r: r["label_accuracy"]), ylim=(0, 1.05)),
    ]
    for a in results["config"]["attacks"]:
        panels.append(Panel(f"{a} PSNR (dB)", lines(measure(a, "psnr"))))
        panels.append(Panel(f"{a} SSIM", lines(measure(a, "ssim"))))
    sc = results["config"]["scenario"]
    title = (
        f"leakage over training: {sc['model']} on {sc['dataset']}, client batch {sc['batch_size']} (held-out "
        f"images), {results['config']['clients']} clients per setting"
    )
    return plot_curves(path, panels, xlabel="training steps of the server's model", title=title, symlog=True)


def write_sweep(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``sweep.json``, ``privacy_utility.png``, ``sweep.md`` and ``report.html`` into ``out`` (with
    checkpoints also ``leakage_over_training.png``)."""
    from .report import write_json_atomic
    from .report.pages import write_page

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "sweep.json",
        "plot": out / "privacy_utility.png",
        "md": out / "sweep.md",
        "html": out / "report.html",
    }
    write_json_atomic(paths["json"], results)
    plot_sweep(results, paths["plot"])
    table = markdown_table(results)
    trends = results["summary"]["trends"]
    trend_lines = [
        f"- `{fam}`: "
        + ", ".join(
            f"{k.replace('_nonincreasing', '')} {'monotone' if v else 'NOT monotone'}"
            for k, v in t.items()
            if k.endswith("_nonincreasing")
        )
        for fam, t in trends.items()
    ]
    cfg = results["config"]
    sc = cfg["scenario"]
    iters = "each attack's default budget" if cfg["iterations"] is None else f"{cfg['iterations']} iterations"
    intro = (
        f"{sc['model']} on `{sc['dataset']}`, client batch {sc['batch_size']}, "
        f"protocol {sc['protocol']['name']}, threat model: {threat_text(sc)}, {cfg['clients']} clients "
        "per setting, attacks "
        f"{', '.join(cfg['attacks'])} ({iters}), utility after {cfg['train_steps']} "
        f"training steps of batch {cfg['train_batch']} (lr {cfg['train_lr']}). {success_text(cfg)} Ran in "
        f"{results['seconds']:.0f} s on backend `{results['backend']}`."
    )
    paragraphs = [intro]
    tables = [table]
    images = [(paths["plot"], "attack leakage vs the defended model's test accuracy")]
    over_training = ""
    if results.get("checkpoints"):
        paths["curve"] = plot_over_training(results, out / "leakage_over_training.png")
        t = results["checkpoints"][0]["training"]
        paragraphs.append(
            "Leakage is measured on the server's model at "
            + ", ".join(str(c["steps"]) for c in results["checkpoints"])
            + f" training steps: one training (seeded SGD, batch {t['batch_size']}, lr {t['lr']}, momentum "
            f"{t['momentum']}, on the train part of `{sc['dataset']}`, {t['train_images']} images) with its weights "
            f"saved at each checkpoint; every client draws its batch from the held-out part ({t['held_out_images']} "
            "images, never trained on). The test accuracy of a setting (its utility) is the same at every checkpoint."
        )
        tables.insert(0, checkpoints_table(results))
        images.insert(0, (paths["curve"], "leakage against the server model's training steps, per setting"))
        over_training = f"{paragraphs[1]}\n\n{tables[0]}\n\n![leakage over training](leakage_over_training.png)\n\n"
    md = (
        f"# Privacy–utility sweep\n\n{intro}\n\n{over_training}![privacy-utility]"
        f"(privacy_utility.png)\n\n{table}\n\nTrends with strength (from no defense to the strongest "
        f"setting; tolerance 0.01 accuracy, 0.25 dB):\n\n" + "\n".join(trend_lines) + "\n"
    )
    paths["md"].write_text(md)
    write_page(
        paths["html"],
        "gradleak privacy–utility sweep",
        paragraphs=[*paragraphs, *trend_lines],
        images=images,
        table_md="\n\n".join(tables),
    )
    return paths
