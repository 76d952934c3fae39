"""Benchmark of the client-side defenses (issue 17, part 3): :func:`gradleak.guard.model_check` on received models and
:class:`gradleak.guard.LeakageGuard` on outgoing updates.

Sections (each writes into results.json; results.md summarises):
  honest     the model check on honest zoo models — mlp (width 64, 256), lenet, convnet (width 16, BatchNorm in eval
             and in train mode), cnn6, fcn3 on bundled digits and photos, resnet18 on photos — seeds 0-2, each at its
             seeded initialisation and after 10 SGD steps (lr 0.05, batches of 16 other samples), on client batches
             of 8 and 16 (resnet18: 8) drawn as a data loader draws them: the false alarms (target 0) and the largest
             value of every check (the calibration of the default thresholds)
  malicious  every strategy registered in gradleak.servers.SERVERS when the benchmark runs (its defaults), on each
             target model it accepts, 2 seeds, client batch of 16: which checks fire without and with the agreed
             architecture (target: every strategy flagged); the leakage guard on the malicious round (the client's
             view: no server record) and the highest image PSNR of the server's attacks (analytic_fc and the
             strategy's own recovery, registered under the strategy's name, with the server's record) before and
             after the guard, beside the constant-image level (target: after the guard, that level)
  overhead   honest rounds, batch of 16: the client's local training (FedSGD: one gradient; FedAvg: K local steps
             on its batch) against the model check plus the guard (target: at most 20% of the client's round)

Run: python benchmarks/guard/run.py [--only SECTION ...] [--check]
(--check reruns CHECK_MODELS of the honest section and compares every check value with results.json within
CHECK_RTOL, requires no false alarm, and requires every strategy that results.json flags — and is registered now —
to be flagged again; exit 1 on a mismatch.) Records the machine (gradleak.cost.machine()); timings depend on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import gradleak.servers
from gradleak.cost import machine
from gradleak.plugins import import_submodules

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
TRAIN_STEPS, TRAIN_LR, TRAIN_BATCH = 10, 0.05, 16
HONEST = (  # (model, kwargs, dataset, batch sizes, BatchNorm modes)
    ("mlp", {"width": 64}, "digits", (8, 16), ("eval",)),
    ("mlp", {"width": 256}, "digits", (8, 16), ("eval",)),
    ("lenet", {}, "digits", (8, 16), ("eval",)),
    ("convnet", {"width": 16}, "digits", (8, 16), ("eval", "train")),
    ("cnn6", {}, "digits", (8, 16), ("eval",)),
    ("fcn3", {}, "digits", (8, 16), ("eval",)),
    ("mlp", {"width": 64}, "photos", (8, 16), ("eval",)),
    ("mlp", {"width": 256}, "photos", (8, 16), ("eval",)),
    ("lenet", {}, "photos", (8, 16), ("eval",)),
    ("convnet", {"width": 16}, "photos", (8, 16), ("eval", "train")),
    ("cnn6", {}, "photos", (8, 16), ("eval",)),
    ("fcn3", {}, "photos", (8, 16), ("eval",)),
    ("resnet18", {}, "photos", (8,), ("eval",)),
)
MALICIOUS_TARGETS = (
    ("mlp", {"width": 256}, "digits"),
    ("mlp", {"width": 256}, "photos"),
    ("convnet", {"width": 16}, "photos"),
)
MALICIOUS_SEEDS = (0, 1)
MALICIOUS_B = 16
NOISE = (1e-3, 1e-2, 1e-1)  # the guard's remedies in the malicious section, tried in order
CONSTANT_MARGIN_DB = 1.0  # "at the constant-image level": within this of it
OVERHEAD = (("mlp", {"width": 256}, "digits"), ("convnet", {"width": 16}, "photos"), ("resnet18", {}, "photos"))
OVERHEAD_B = 16
LOCAL_STEPS = (1, 5, 20, 50)  # 1: FedSGD (one gradient); K > 1: FedAvg, K full-batch local steps
REPEATS = 3
BUDGET = 0.20
CHECK_MODELS = (("mlp", "digits"), ("lenet", "digits"), ("cnn6", "photos"))
CHECK_RTOL = 1e-3


def log(*a) -> None:
    print(*a, flush=True)


def _data(name: str):
    from gradleak.data import load_dataset

    return load_dataset(name)


def honest_model(name: str, kw: dict, data, seed: int, stage: str, bn: str) -> torch.nn.Module:
    """A zoo model at its seeded initialisation, or after TRAIN_STEPS SGD steps on batches of other samples."""
    from gradleak.models import build_model
    from gradleak.protocols import cross_entropy

    torch.manual_seed(seed)
    model = build_model(name, data.num_classes, data.image_shape, **kw)
    if stage == "trained":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=TRAIN_LR)
        gen = torch.Generator().manual_seed(1000 + seed)
        for _ in range(TRAIN_STEPS):
            images, labels = data.sample(TRAIN_BATCH, generator=gen)
            opt.zero_grad()
            cross_entropy(model(data.normalization.normalize(images)), labels).backward()
            opt.step()
    return model.train(bn == "train")


def honest_rows(models=HONEST) -> list[dict]:
    from gradleak.guard import model_check

    rows = []
    for name, kw, data_name, sizes, modes in models:
        data = _data(data_name)
        for seed in SEEDS:
            for stage in ("init", "trained"):
                for bn in modes:
                    model = honest_model(name, kw, data, seed, stage, bn)
                    for b in sizes:
                        images, labels = data.sample(b, generator=torch.Generator().manual_seed(seed))
                        t0 = time.perf_counter()
                        result = model_check(model, data.normalization.normalize(images), labels)
                        rows.append(
                            {
                                "model": name,
                                "kwargs": kw,
                                "data": data_name,
                                "seed": seed,
                                "stage": stage,
                                "bn": bn,
                                "B": b,
                                "values": {c.name: c.value for c in result.checks},
                                "fired": [c.name for c in result.fired],
                                "seconds": time.perf_counter() - t0,
                            }
                        )
                        r = rows[-1]
                        log(f"honest {name} {kw} {data_name} seed {seed} {stage} bn {bn} B={b}: fired {r['fired']}")
    return rows


def honest_summary(rows: list[dict]) -> dict:
    from gradleak.guard import ModelCheckThresholds

    t = ModelCheckThresholds()
    names = sorted({k for r in rows for k in r["values"]})
    worst = {}
    for n in names:
        seen = [(r["values"][n], r) for r in rows if r["values"].get(n) is not None]
        value, r = max(seen, key=lambda p: p[0])
        worst[n] = {
            "max": value,
            "threshold": getattr(t, n),
            "at": f"{r['model']} {r['kwargs']} {r['data']} seed {r['seed']} {r['stage']} bn {r['bn']} B={r['B']}",
        }
    models = {(r["model"], json.dumps(r["kwargs"]), r["data"], r["seed"], r["stage"], r["bn"]) for r in rows}
    return {
        "models": len(models),
        "checks_run": len(rows),
        "false_alarms": sum(bool(r["fired"]) for r in rows),
        "max_by_check": worst,
    }


def best_psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """The highest PSNR of any reconstruction (clamped to [0, 1]) against any image of the batch (a recovery may
    return fewer images than the batch, e.g. fishing's one)."""
    from gradleak.metrics import psnr

    recon = recon.detach().clamp(0, 1)
    return max(float(psnr(r.expand_as(images), images).max()) for r in recon)


def server_attack_psnr(obs, images, name: str) -> dict:
    """The highest image PSNR of analytic_fc and the strategy's own recovery (by its name) on ``obs``."""
    from gradleak.attacks import ATTACKS
    from gradleak.errors import GradleakError

    out = {}
    for attack_name in ("analytic_fc", name):
        if attack_name not in ATTACKS:
            continue
        attack = ATTACKS.get(attack_name)()
        try:
            attack.check(obs)
            res = attack.run(obs, generator=torch.Generator().manual_seed(0))
        except GradleakError as e:
            out[attack_name] = {"error": str(e).splitlines()[-1]}
            continue
        out[attack_name] = {"max_psnr": best_psnr(res.images, images), "seconds": res.seconds}
    return out


def _fmt(db: float | None) -> str:
    return "–" if db is None else f"{db:.1f}"


def _best(scores: dict) -> float | None:
    values = [s["max_psnr"] for s in scores.values() if "max_psnr" in s]
    return max(values) if values else None


def malicious_rows() -> list[dict]:
    from gradleak.defenses import GaussianNoise
    from gradleak.guard import LeakageGuard, architecture_check, model_check
    from gradleak.scenario import Scenario, build_scenario_model, simulate
    from gradleak.servers import SERVERS

    guards = {"block": LeakageGuard(), "noise": LeakageGuard(remedies=tuple(GaussianNoise(s) for s in NOISE))}
    rows = []
    for server_name, cls in SERVERS.items():
        for name, kw, data_name in MALICIOUS_TARGETS:
            data = _data(data_name)
            for seed in MALICIOUS_SEEDS:
                strategy = cls()
                sc = Scenario(model=name, model_kwargs=kw, dataset=data_name, batch_size=MALICIOUS_B, seed=seed)
                agreed, _ = build_scenario_model(sc, data.num_classes, data.image_shape)
                row = {"server": server_name, "config": strategy.to_json(), "model": name, "kwargs": kw}
                row |= {"data": data_name, "seed": seed, "B": MALICIOUS_B}
                problems = strategy.problems(agreed, input_shape=data.image_shape, num_classes=data.num_classes)
                if problems:
                    rows.append({**row, "refused": problems})
                    log(f"malicious {server_name} on {name} {data_name}: refused ({problems[0]})")
                    continue
                obs, truth = simulate(replace(sc, server=strategy), data)
                check = model_check(obs.model, data.normalization.normalize(truth.images), truth.targets)
                arch = architecture_check(obs.model.state_dict(), agreed)
                before = server_attack_psnr(obs, truth.images, server_name)
                row |= {
                    "check": check.to_json(),
                    "fired": [c.name for c in check.fired],
                    "architecture": arch.to_json(),
                    "flagged": bool(check.fired) or arch.fired,
                    "server_attacks_before": before,
                    "max_psnr_before": _best(before),
                }
                for kind, guard in guards.items():
                    decision = guard.inspect(
                        obs.model,
                        obs.update,
                        protocol=obs.protocol,
                        images=truth.images,
                        targets=truth.targets,
                        normalization=data.normalization,
                    )
                    # blocked: the server gets nothing and is left with a constant image
                    after = (
                        None
                        if decision.update is None
                        else server_attack_psnr(obs.with_update(decision.update), truth.images, server_name)
                    )
                    row[f"guard_{kind}"] = {
                        **decision.to_json(),
                        "server_attacks_after": after,
                        "max_psnr_after": decision.constant_db if after is None else _best(after),
                    }
                row["constant_db"] = decision.constant_db
                # the client's whole protection: a model that fails the check is not trained on (nothing is sent)
                row["max_psnr_after_protection"] = (
                    row["constant_db"] if row["fired"] else row["guard_block"]["max_psnr_after"]
                )
                rows.append(row)
                log(
                    f"malicious {server_name} on {name} {data_name} seed {seed}: fired {row['fired']}, architecture "
                    f"{arch.value:.0f}; server PSNR {_fmt(row['max_psnr_before'])} -> guard "
                    f"{row['guard_block']['action']} {_fmt(row['guard_block']['max_psnr_after'])}, noise guard "
                    f"{row['guard_noise']['action']} {_fmt(row['guard_noise']['max_psnr_after'])}, protection "
                    f"{_fmt(row['max_psnr_after_protection'])} (constant {row['constant_db']:.1f} dB)"
                )
    return rows


def _worst_over_constant(rows: list[dict], after) -> float | None:
    """The largest excess over the constant-image level of ``after(row)`` (a PSNR; None where no attack ran)."""
    return max((after(r) - r["constant_db"] for r in rows if after(r) is not None), default=None)


def malicious_summary(rows: list[dict]) -> dict:
    from gradleak.servers import SERVERS

    ran = [r for r in rows if "refused" not in r]
    by_server = {}
    for name in SERVERS.names():
        mine = [r for r in ran if r["server"] == name]
        before = [r["max_psnr_before"] for r in mine if r["max_psnr_before"] is not None]
        by_server[name] = {
            "rounds": len(mine),
            "flagged_without_reference": sum(bool(r["fired"]) for r in mine),
            "flagged": sum(r["flagged"] for r in mine),
            "checks_fired": sorted({c for r in mine for c in r["fired"]}),
            "guard_actions": [r["guard_block"]["action"] for r in mine],
            "noise_guard_actions": [r["guard_noise"]["action"] for r in mine],
            "max_psnr_before": max(before, default=None),
            "guard_over_constant_db": _worst_over_constant(mine, lambda r: r["guard_block"]["max_psnr_after"]),
            "noise_guard_over_constant_db": _worst_over_constant(mine, lambda r: r["guard_noise"]["max_psnr_after"]),
            "protection_over_constant_db": _worst_over_constant(mine, lambda r: r["max_psnr_after_protection"]),
        }
    return {"strategies": SERVERS.names(), "by_server": by_server}


def _median_seconds(fn, setup=lambda: None) -> float:
    """The median over REPEATS of ``fn(setup())``'s wall time (``setup`` not timed)."""
    times = []
    for _ in range(REPEATS):
        arg = setup()
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead_rows() -> list[dict]:
    from gradleak.client import client_round
    from gradleak.guard import LeakageGuard, model_check
    from gradleak.protocols import FedAvg, FedSGD

    guard = LeakageGuard()
    rows = []
    for name, kw, data_name in OVERHEAD:
        data = _data(data_name)
        model = honest_model(name, kw, data, 0, "init", "eval")
        images, labels = data.sample(OVERHEAD_B, generator=torch.Generator().manual_seed(0))
        x = data.normalization.normalize(images)
        check_s = _median_seconds(lambda _: model_check(model, x, labels))
        for k in LOCAL_STEPS:
            protocol = FedSGD() if k == 1 else FedAvg(local_steps=k, local_lr=0.01)
            gen = torch.Generator().manual_seed(0)
            update, _ = client_round(model, protocol, x, labels, generator=gen)
            train_s = _median_seconds(lambda _: client_round(model, protocol, x, labels, generator=gen))
            decision = guard.inspect(
                model, update, protocol=protocol, images=images, targets=labels, normalization=data.normalization
            )
            guard_s = _median_seconds(  # on a fresh copy of the received model each time: nothing kept from a run
                lambda received: guard.inspect(
                    received, update, protocol=protocol, images=images, targets=labels, normalization=data.normalization
                ),
                setup=lambda: copy.deepcopy(model),
            )
            rows.append(
                {
                    "model": name,
                    "kwargs": kw,
                    "data": data_name,
                    "B": OVERHEAD_B,
                    "local_steps": k,
                    "protocol": protocol.to_json(),
                    "train_seconds": train_s,
                    "model_check_seconds": check_s,
                    "guard_seconds": guard_s,
                    "guard_action": decision.action,
                    "overhead": (check_s + guard_s) / train_s,
                }
            )
            r = rows[-1]
            log(
                f"overhead {name} {data_name} K={k}: train {train_s:.3f} s, check {check_s:.3f} s, guard "
                f"{guard_s:.3f} s ({decision.action}) -> {100 * r['overhead']:.0f}%"
            )
    return rows


def bench(section: str) -> dict:
    if section == "honest":
        rows = honest_rows()
        return {"rows": rows, "summary": honest_summary(rows)}
    if section == "malicious":
        rows = malicious_rows()
        return {"rows": rows, "summary": malicious_summary(rows)}
    return {"rows": overhead_rows()}


def check(path: Path) -> int:
    from gradleak.guard import model_check
    from gradleak.scenario import Scenario, simulate
    from gradleak.servers import SERVERS

    results = json.loads(path.read_text())
    committed = {
        (r["model"], json.dumps(r["kwargs"]), r["data"], r["seed"], r["stage"], r["bn"], r["B"]): r
        for r in results["sections"]["honest"]["rows"]
    }
    wanted = [m for m in HONEST if (m[0], m[2]) in CHECK_MODELS]
    bad = 0
    for row in honest_rows(wanted):
        old = committed[
            (row["model"], json.dumps(row["kwargs"]), row["data"], row["seed"], row["stage"], row["bn"], row["B"])
        ]
        for name, value in row["values"].items():
            ref = old["values"].get(name)
            if (value is None) != (ref is None) or (
                value is not None and abs(value - ref) > CHECK_RTOL * abs(ref) + 1e-9
            ):
                bad += 1
                log(
                    f"MISMATCH {row['model']} {row['data']} seed {row['seed']} {row['stage']} B={row['B']} {name}: "
                    f"{value} vs {ref}"
                )
        if row["fired"]:
            bad += 1
            log(f"FALSE ALARM {row['model']} {row['data']} seed {row['seed']} {row['stage']}: {row['fired']}")
    for r in results["sections"].get("malicious", {}).get("rows", []):
        if "refused" in r or not r["fired"] or r["server"] not in SERVERS:
            continue
        sc = Scenario(
            model=r["model"],
            model_kwargs=r["kwargs"],
            dataset=r["data"],
            batch_size=r["B"],
            seed=r["seed"],
            server=SERVERS.get(r["server"])(),
        )
        obs, truth = simulate(sc)
        now = model_check(obs.model, obs.normalization.normalize(truth.images), truth.targets)
        if not now.fired:
            bad += 1
            log(f"NOT FLAGGED {r['server']} on {r['model']} {r['data']} seed {r['seed']}")
    log(
        f"guard check: {bad} mismatches (honest values within {CHECK_RTOL:g} relative, no false alarm, "
        "committed malicious detections repeated)"
    )
    return 1 if bad else 0


def markdown(results: dict) -> str:
    e = results["environment"]
    s = results["sections"]
    out = [
        "# Client-side defenses — benchmark (issue 17, part 3)",
        "",
        f"Total wall time {results['seconds']:.0f} s; {e['threads']} torch threads on {e['cpus']} CPUs, "
        f"OMP_WAIT_POLICY={e['omp_wait_policy']}, torch {e['torch']}, load average (1 min) "
        f"{e['load_average_start'][0]:.2f} → {e['load_average_end'][0]:.2f}.",
        "",
    ]
    if results.get("note"):
        out += [results["note"], ""]
    if "honest" in s:
        h = s["honest"]["summary"]
        out += [
            "## Honest models: false alarms and calibration",
            "",
            f"{h['models']} honest models ({h['checks_run']} checks: each on batches of 8 and 16, resnet18 on 8): "
            f"**{h['false_alarms']} false alarms** (target 0).",
            "",
            "| check | largest honest value | default threshold | where |",
            "|---|---|---|---|",
        ]
        for n, w in h["max_by_check"].items():
            out.append(f"| {n} | {w['max']:.4g} | {w['threshold']:.4g} | {w['at']} |")
        out.append("")
    if "malicious" in s:
        m = s["malicious"]["summary"]
        out += ["## Malicious servers", ""]
        if not m["strategies"]:
            out += [
                "No malicious strategy was registered in `gradleak.servers.SERVERS` when this ran; rerun the section "
                "once the strategies are merged: `python benchmarks/guard/run.py --only malicious`.",
                "",
            ]
        else:
            out += [
                f"Strategies registered: {', '.join(m['strategies'])} (their defaults), on "
                + ", ".join(f"{a} {b or ''} {c}" for a, b, c in MALICIOUS_TARGETS)
                + f", seeds {', '.join(map(str, MALICIOUS_SEEDS))}, client batch of {MALICIOUS_B}. Flagged: some "
                "model check fired without the agreed architecture / some check or the architecture check fired. "
                "Server PSNR: the highest image PSNR of analytic_fc and the strategy's own recovery, which reads the "
                "server's record. The guard (default: block at 25 dB) and the noise guard (remedies σ = "
                + ", ".join(map(str, NOISE))
                + ", then block) score the update with their own fast attacks from the client's view, which has no "
                "server record (the imprint recovery finds the block in the received model; the trap recovery needs "
                "the record and refuses); after them the server attacks what was sent (a blocked update leaves it the "
                "constant-image level). Protection: a model that fails the check is not trained on, otherwise the "
                "guard decides. The last three columns: the worst excess over the constant-image level (dB).",
                "",
                "| strategy | rounds | flagged w/o reference | flagged | checks fired | guard | noise guard "
                "| server PSNR before (dB) | after guard | after noise guard | after protection |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]

            def db(v: float | None) -> str:
                return "–" if v is None else f"{v:+.1f}"

            for name, v in m["by_server"].items():
                before = "–" if v["max_psnr_before"] is None else f"{v['max_psnr_before']:.1f}"
                out.append(
                    f"| {name} | {v['rounds']} | {v['flagged_without_reference']} | {v['flagged']} | "
                    f"{', '.join(v['checks_fired']) or '–'} | {', '.join(v['guard_actions'])} | "
                    f"{', '.join(v['noise_guard_actions'])} | {before} | {db(v['guard_over_constant_db'])} | "
                    f"{db(v['noise_guard_over_constant_db'])} | {db(v['protection_over_constant_db'])} |"
                )
            by = m["by_server"]
            missed = [n for n, v in by.items() if v["flagged_without_reference"] < v["rounds"]]

            def above(key: str) -> list[str]:
                return [n for n, v in by.items() if v[key] is not None and v[key] > CONSTANT_MARGIN_DB]

            leaky, guard_leaky = above("protection_over_constant_db"), above("guard_over_constant_db")
            out += [
                "",
                "Targets: every strategy flagged in every round without the agreed architecture — "
                + ("met" if not missed else f"not met for {', '.join(missed)}")
                + f"; after the client's protection the server is left within {CONSTANT_MARGIN_DB:g} dB of the "
                "constant-image level — "
                + ("met" if not leaky else f"not met for {', '.join(leaky)}")
                + "; the guard alone (blocking) leaves the server at that level too — "
                + ("met" if not guard_leaky else f"not met for {', '.join(guard_leaky)}")
                + ". The guard sees only what its fast attacks see from the client's side, so a noise remedy chosen "
                "against those attacks can leave the server's own recovery above the constant-image level.",
            ]
            refused = sorted({(r["server"], r["model"], r["data"]) for r in s["malicious"]["rows"] if "refused" in r})
            if refused:
                out += ["", "Refused targets: " + "; ".join(f"{a} on {b} ({c})" for a, b, c in refused) + "."]
            out.append("")
    if "overhead" in s:
        rows = s["overhead"]["rows"]
        out += [
            "## Overhead on honest rounds",
            "",
            f"Client batch of {OVERHEAD_B}; the client's round is its local training: FedSGD one gradient (K = 1) or "
            "FedAvg K full-batch local steps; the guard's cost is the model check on the received model plus the "
            "leakage guard on the update (the fast attacks, and label recovery where one of them applies), timed on a "
            f"fresh copy of the received model; median of {REPEATS} runs. Budget: "
            f"{100 * BUDGET:.0f}% of the round. Overhead: (model check + guard) ÷ round; guard alone: guard ÷ round.",
            "",
            "| model | data | K | round (s) | model check (s) | guard (s) | guard's action | overhead | guard alone |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['model']} {r['kwargs'] or ''} | {r['data']} | {r['local_steps']} | {r['train_seconds']:.3f} | "
                f"{r['model_check_seconds']:.3f} | {r['guard_seconds']:.3f} | {r['guard_action']} | "
                f"{100 * r['overhead']:.0f}% | {100 * r['guard_seconds'] / r['train_seconds']:.0f}% |"
            )

        def within(cost) -> str:
            parts = []
            for name, kw, data_name in OVERHEAD:
                mine = [r for r in rows if (r["model"], r["kwargs"], r["data"]) == (name, kw, data_name)]
                ok = [r["local_steps"] for r in mine if cost(r) <= BUDGET * r["train_seconds"]]
                ks = [r["local_steps"] for r in mine]
                parts.append(f"{name} on {data_name}: " + (f"K ≥ {min(ok)}" if ok else f"none of K = {ks}"))
            return "; ".join(parts)

        out += [
            "",
            f"Within the {100 * BUDGET:.0f}% budget, model check + guard: "
            + within(lambda r: r["model_check_seconds"] + r["guard_seconds"])
            + "; the guard alone: "
            + within(lambda r: r["guard_seconds"])
            + ". The guard recovers labels only to feed an attack that applies to the round. None applies to the "
            "convolutional models (their first layer is a convolution) or to a FedAvg delta (analytic_fc needs a "
            "gradient), so there the guard costs milliseconds. On the MLP's FedSGD round analytic_fc applies and "
            "inverts every image alone in its class exactly: the guard recovers the labels, runs the attack, scores "
            "it and blocks, which costs several times a gradient of a few milliseconds. The model check's "
            "per-example gradients alone cost more than a FedSGD round's one gradient. Neither cost grows with K.",
            "",
        ]
    out += [
        "`python benchmarks/guard/run.py --check` reruns the honest models "
        f"{', '.join(f'{a} on {b}' for a, b in CHECK_MODELS)} "
        f"and fails on a check value off by more than {CHECK_RTOL:g} (relative), on a false alarm, or on a committed "
        "malicious detection that no longer fires.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=["honest", "malicious", "overhead"])
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--check", action="store_true", help="rerun the check subset and compare with results.json")
    p.add_argument("--note", help="a line for results.md on what this run was (e.g. which code it ran on)")
    a = p.parse_args(argv)
    import_submodules(gradleak.servers)  # registers every strategy module, merged or not into the package's imports
    out = Path(a.out)
    if a.check:
        return check(out / "results.json")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    results["environment"] = machine()
    results["note"] = a.note
    t0 = time.perf_counter()
    for name in a.only:
        results["sections"][name] = bench(name)
        path.write_text(json.dumps(results, indent=1))
    results["seconds"] = time.perf_counter() - t0
    results["environment"]["load_average_end"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
