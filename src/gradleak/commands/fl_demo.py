"""``gradleak fl-demo``: a Flower simulation whose curious server captures and audits every client.

N clients on a bundled dataset train with FedSGD or FedAvg (and the chosen defenses / label
augmentations, applied inside the clients); the server's :class:`~gradleak.fl.flower.CaptureStrategy`
saves each reply as an Observation and attacks it as the rounds go (every ``--audit-every``-th round, at most
``--audits-per-round`` clients a round), and evaluates the global model after every round. Afterwards the demo
scores what the server recovered against each client's real batch and writes ``results.json``, ``fl_demo.md``,
``report.html``, the per-round leakage curve ``leakage_per_round.png`` (per client and their mean, beside the
global model's accuracy) and one PNG grid per audited client round. Needs ``pip install gradleak[flower]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ..cli_args import int_range, nonnegative_int, output_dir, positive_float, positive_int
from ..scenario_args import add_scenario_args, scenario_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fl-demo",
        help="Flower simulation with a capturing server; audit report per client",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--clients", type=int_range(2, 10_000), default=2, help="simulated clients (at least 2)")
    p.add_argument("--rounds", type=positive_int(100_000), default=2)
    add_scenario_args(p, model="mlp", data="digits", model_kwargs={"mlp": {"width": 64}, "convnet": {"width": 64}})
    p.add_argument("--lr", type=positive_float(), default=0.1, help="FedSGD step the server asks clients to take")
    p.add_argument(
        "--attack",
        action="append",
        help="attack run on each capture (default ig_batch_tv; with --server, that strategy's recovery)",
    )
    p.add_argument("--no-attack", action="store_true", help="label recovery only")
    p.add_argument(
        "--iterations", type=positive_int(), help="each attack's iteration budget (default: the attack's own)"
    )
    p.add_argument(
        "--audit-every", type=positive_int(100_000), default=1, metavar="K", help="audit rounds 1, 1+K, 1+2K, ..."
    )
    p.add_argument(
        "--audits-per-round",
        type=nonnegative_int(10_000),
        metavar="M",
        help="audit at most M clients of a round, the same ones each round (default: every client)",
    )
    p.add_argument(
        "--max-capture-mb", type=positive_float(2**30), default=1024.0, help="stop capturing beyond this size"
    )
    p.add_argument("--keep-rounds", type=positive_int(100_000), help="keep only the last K rounds' captures on disk")
    p.add_argument("--out", type=output_dir, default="out/fl-demo")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..fl.task import FlowerTask

    task = FlowerTask(scenario=scenario_from_args(a), lr=a.lr)  # a bad scenario is reported with or without Flower
    try:
        from ..fl import flower
    except ImportError as e:
        raise InputError(f"fl-demo needs Flower: pip install 'gradleak[flower]' ({e})") from None
    from ..auditing import DEFAULT_ATTACK
    from ..fl.capture import LabelAttackAudit

    server = task.scenario.server  # a malicious server runs the recovery its modification is made for
    attacks = () if a.no_attack else tuple(a.attack or [server.name if server else DEFAULT_ATTACK])
    out = Path(a.out)
    audit = LabelAttackAudit(attacks=attacks, settings={"iterations": a.iterations}, seed=a.seed)
    t0 = time.perf_counter()
    store = flower.run_simulation(
        task,
        num_clients=a.clients,
        num_rounds=a.rounds,
        capture_dir=out / "capture",
        audit=audit,
        audit_every=a.audit_every,
        audits_per_round=a.audits_per_round,
        max_bytes=int(a.max_capture_mb * 2**20),
        keep_rounds=a.keep_rounds,
    )
    seconds = time.perf_counter() - t0
    results = score_captures(task, store, a.clients, out)
    results.update(
        {
            "config": {
                **task.to_config(),
                "clients": a.clients,
                "rounds": a.rounds,
                "attacks": list(attacks),
                "iterations": a.iterations,
                "audit_every": a.audit_every,
                "audits_per_round": a.audits_per_round,
            },
            "simulation_seconds": seconds,
        }
    )
    write_report(results, out)
    for r in results["captures"]:
        if not r["audited"]:
            continue
        atk = " ".join(f"{n} PSNR {v['mean_psnr']:.2f} dB" for n, v in r["attacks"].items() if v.get("mean_psnr"))
        print(
            f"round {r['round']} client {r['partition']}: labels {r.get('recovered_labels')} "
            f"(true {r.get('true_labels')}, accuracy {r.get('label_accuracy')}) {atk}"
        )
    print(f"simulation {seconds:.0f} s; report: {out / 'report.html'}")
    return 0


def score_captures(task: Any, store: Any, num_clients: int, out: Path) -> dict[str, Any]:
    """Score every capture's audit against the client's real batch (only the demo knows it)."""
    from safetensors.torch import load_file

    from ..fl.task import client_batch
    from ..metrics import label_accuracy, score_images
    from ..report import save_grid
    from ..results import AuditResult

    data = task.load_data()
    rows = []
    for e in store.captured():
        pid = int(e["metrics"].get("partition-id", -1))
        row: dict[str, Any] = {
            "round": e["round"],
            "client": e["client"],
            "partition": pid,
            "capture": f"capture/{e['path']}",
            "bytes": e["bytes"],
            "attacks": {},
            "epsilon": e["metrics"].get("epsilon"),
            "audited": e.get("audit") is not None,
        }
        audit = e.get("audit") or {}
        if pid < 0 or not row["audited"]:
            rows.append(row)
            continue
        batch = client_batch(task, data, pid, num_clients, e["round"])
        row["true_labels"] = batch.labels.tolist()
        if "schema" not in audit:  # the capture's audit failed as a whole
            row["audit_error"] = audit.get("error")
            rows.append(row)
            continue
        result = AuditResult.from_json(audit)
        chosen = result.labels.chosen
        recovered = None if chosen is None or chosen.result is None else chosen.result.labels
        row["recovered_labels"] = recovered
        row["label_accuracy"] = None if recovered is None else label_accuracy(row["true_labels"], recovered)
        recon = load_file(str(store.root / audit["reconstructions"])) if audit.get("reconstructions") else {}
        for run in result.attacks:
            if run.error or run.result is None or run.name not in recon:
                row["attacks"][run.name] = {"error": run.error}
                continue
            s = score_images(recon[run.name], batch.images)
            grid = f"round{e['round']}_client{pid}_{run.name}.png"
            originals = batch.images if s.originals is None else batch.images[s.originals]
            save_grid(out / grid, originals, [recon[run.name][s.order]])
            row["attacks"][run.name] = {**s.to_json(), "grid": grid, "seconds": run.result.seconds}
        rows.append(row)
    evaluations = {str(r): m for r, m in sorted(store.evaluations.items())}
    return {
        "schema": 1,
        "kind": "fl-demo",
        "captures": rows,
        "capture_bytes": store.bytes_used(),
        "evaluations": evaluations,
        "rounds": round_curve(rows, store.evaluations),
    }


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else None


def round_curve(rows: list[dict[str, Any]], evaluations: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: each audited client's label accuracy and attack PSNR/SSIM (by partition), their means, and
    the accuracy of the global model the clients trained that round (the evaluation after the round before)."""
    curve = []
    for rnd in sorted({r["round"] for r in rows}):
        mine = [r for r in rows if r["round"] == rnd and r["audited"] and r["partition"] >= 0]
        attacks: dict[str, Any] = {}
        for name in sorted({a for r in mine for a in r["attacks"]}):
            runs = {str(r["partition"]): r["attacks"].get(name, {}) for r in mine}
            attacks[name] = {
                "psnr": {p: s.get("mean_psnr") for p, s in runs.items()},
                "ssim": {p: s.get("mean_ssim") for p, s in runs.items()},
                "mean_psnr": _mean([s.get("mean_psnr") for s in runs.values()]),
                "mean_ssim": _mean([s.get("mean_ssim") for s in runs.values()]),
            }
        labels = {str(r["partition"]): r.get("label_accuracy") for r in mine}
        curve.append(
            {
                "round": rnd,
                "model_accuracy": (evaluations.get(rnd - 1) or {}).get("accuracy"),
                "audited": sorted(int(p) for p in labels),
                "label_accuracy": labels,
                "mean_label_accuracy": _mean(list(labels.values())),
                "attacks": attacks,
            }
        )
    return curve


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, the per-round curve ``leakage_per_round.png``, ``fl_demo.md`` and ``report.html``."""
    from ..report import write_json_atomic
    from ..report.pages import write_page

    write_json_atomic(out / "results.json", results)
    cfg = results["config"]
    plot_rounds(results, out / "leakage_per_round.png")
    head = (
        "| round | client | true labels | recovered | label acc | "
        + " | ".join(f"{a} PSNR | {a} SSIM" for a in cfg["attacks"])
        + " | ε (round) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    images = [
        (
            out / "leakage_per_round.png",
            "leakage per round (each audited client, and their mean) and the "
            "accuracy of the global model the clients trained in that round",
        )
    ]
    for r in results["captures"]:
        cells = [
            str(r["round"]),
            str(r["partition"]),
            str(r.get("true_labels")),
            str(r.get("recovered_labels")) if r["audited"] else "not audited",
            "–" if r.get("label_accuracy") is None else f"{r['label_accuracy']:.2f}",
        ]
        for a in cfg["attacks"]:
            s = r["attacks"].get(a, {})
            cells += ["–", "–"] if s.get("mean_psnr") is None else [f"{s['mean_psnr']:.2f}", f"{s['mean_ssim']:.3f}"]
            if s.get("grid"):
                images.append(
                    (
                        out / s["grid"],
                        f"round {r['round']}, client {r['partition']}, {a}: "
                        "top row the client's batch, bottom row what the server recovered",
                    )
                )
        cells.append("–" if r.get("epsilon") is None else f"{r['epsilon']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    per_round = round_table(results)
    final = results["evaluations"].get(str(cfg["rounds"]), {}).get("accuracy")
    budget = f"every {cfg['audit_every']}. round" if cfg["audit_every"] > 1 else "every round"
    if cfg["audits_per_round"] is not None:
        budget += f", at most {cfg['audits_per_round']} clients a round"
    intro = (
        f"Flower simulation: {cfg['clients']} clients, {cfg['rounds']} rounds, protocol `{cfg['protocol']}`, "
        f"model `{cfg['model']}` on `{cfg['data']}`, batch {cfg['batch-size']} per client, client defenses "
        f"`{cfg['defenses'] or 'none'}`. The server captured every reply with CaptureStrategy and attacked the "
        f"captures of {budget} ({results['simulation_seconds']:.0f} s, "
        f"{results['capture_bytes'] / 2**20:.1f} MiB of captures). After every round it evaluated the global "
        "model on the whole dataset (Flower's server-side evaluate; the clients' shards together, of which each "
        "client trains on one batch a round); a round's `model acc` is that of the model its clients trained. "
        + ("" if final is None else f"Final global model accuracy: {final:.3f}.")
    )
    md = (
        f"# Flower capture audit\n\n{intro}\n\n![leakage per round](leakage_per_round.png)\n\n## Per round\n\n"
        f"{per_round}\n\n## Per capture\n\n" + "\n".join(lines) + "\n"
    )
    (out / "fl_demo.md").write_text(md)
    write_page(
        out / "report.html",
        "gradleak Flower capture audit",
        paragraphs=[intro],
        images=images,
        table_md=per_round + "\n\n" + "\n".join(lines),
    )


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def round_table(results: dict[str, Any]) -> str:
    """The per-round curve as a Markdown table: the global model's accuracy, the mean leakage over the audited
    clients."""
    attacks = results["config"]["attacks"]
    head = ["round", "model acc", "audited clients", "label acc (mean)"]
    head += [f"{a} {m} (mean)" for a in attacks for m in ("PSNR", "SSIM")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rounds"]:
        cells = [str(r["round"]), _f(r["model_accuracy"], 3), ", ".join(map(str, r["audited"])) or "none"]
        cells.append(_f(r["mean_label_accuracy"]))
        for a in attacks:
            s = r["attacks"].get(a, {})
            cells += [_f(s.get("mean_psnr")), _f(s.get("mean_ssim"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(results: dict[str, Any], path: Path) -> Path:
    """The per-round leakage curve: the global model's accuracy; label accuracy and each attack's PSNR per
    audited client (faint) and their mean."""
    from ..report.curves import Line, Panel, plot_curves

    rounds = results["rounds"]
    clients = sorted({p for r in rounds for p in r["label_accuracy"]}, key=int)

    def per_client(get: Any, mean: Any, what: str) -> list[Line]:
        lines = [
            Line(
                "each audited client",
                [(r["round"], get(r, p)) for r in rounds if get(r, p) is not None],
                emphasis=False,
            )
            for p in clients
        ]
        return [
            *lines,
            Line(
                f"mean of the audited clients ({what})", [(r["round"], mean(r)) for r in rounds if mean(r) is not None]
            ),
        ]

    panels = [
        Panel(
            "global model accuracy",
            [
                Line(
                    "model the round's clients trained",
                    [(r["round"], r["model_accuracy"]) for r in rounds if r["model_accuracy"] is not None],
                )
            ],
            ylim=(0, 1.05),
        ),
        Panel(
            "label accuracy",
            per_client(lambda r, p: r["label_accuracy"].get(p), lambda r: r["mean_label_accuracy"], "labels"),
            ylim=(0, 1.05),
        ),
    ]
    for a in results["config"]["attacks"]:
        panels.append(
            Panel(
                f"{a} PSNR (dB)",
                per_client(
                    lambda r, p, a=a: r["attacks"].get(a, {}).get("psnr", {}).get(p),
                    lambda r, a=a: r["attacks"].get(a, {}).get("mean_psnr"),
                    a,
                ),
            )
        )
    cfg = results["config"]
    title = (
        f"leakage per FL round: {cfg['clients']} clients, protocol {cfg['protocol']}, {cfg['model']} on "
        f"{cfg['data']}, batch {cfg['batch-size']} per client"
    )
    return plot_curves(path, panels, xlabel="FL round", title=title)
