"""``gradleak fl-demo``: a Flower simulation whose curious server captures and audits every client.

N clients on a bundled dataset train with FedSGD or FedAvg (and the chosen defenses / label
augmentations, applied inside the clients); the server's :class:`~gradleak.fl.flower.CaptureStrategy`
saves each reply as an Observation and attacks it as the rounds go. Afterwards the demo scores what
the server recovered against each client's real batch and writes ``results.json``, ``report.html``
and one PNG grid per captured client round. Needs ``pip install gradleak[flower]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..cli_args import int_range, output_dir, positive_float, positive_int
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
        help="attack run on each capture (default inverting_gradients; with --server, that strategy's recovery)",
    )
    p.add_argument("--no-attack", action="store_true", help="label recovery only")
    p.add_argument(
        "--iterations", type=positive_int(), help="each attack's iteration budget (default: the attack's own)"
    )
    p.add_argument(
        "--max-capture-mb", type=positive_float(2**30), default=1024.0, help="stop capturing beyond this size"
    )
    p.add_argument("--keep-rounds", type=positive_int(100_000), help="keep only the last K rounds' captures on disk")
    p.add_argument("--out", type=output_dir, default="out/fl-demo")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..errors import InputError

    try:
        from ..fl import flower
    except ImportError as e:
        raise InputError(f"fl-demo needs Flower: pip install 'gradleak[flower]' ({e})") from None
    from ..fl.capture import LabelAttackAudit
    from ..fl.task import FlowerTask

    task = FlowerTask(scenario=scenario_from_args(a), lr=a.lr)
    server = task.scenario.server  # a malicious server runs the recovery its modification is made for
    attacks = () if a.no_attack else tuple(a.attack or [server.name if server else "inverting_gradients"])
    out = Path(a.out)
    audit = LabelAttackAudit(attacks=attacks, settings={"iterations": a.iterations}, seed=a.seed)
    t0 = time.perf_counter()
    store = flower.run_simulation(
        task,
        num_clients=a.clients,
        num_rounds=a.rounds,
        capture_dir=out / "capture",
        audit=audit,
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
            },
            "simulation_seconds": seconds,
        }
    )
    write_report(results, out)
    for r in results["captures"]:
        atk = " ".join(f"{n} PSNR {v['mean_psnr']:.2f} dB" for n, v in r["attacks"].items() if v.get("mean_psnr"))
        print(
            f"round {r['round']} client {r['partition']}: labels {r['recovered_labels']} "
            f"(true {r['true_labels']}, accuracy {r['label_accuracy']}) {atk}"
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
        }
        audit = e.get("audit") or {}
        if pid < 0:
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
            save_grid(out / grid, batch.images, [recon[run.name][s.order]])
            row["attacks"][run.name] = {**s.to_json(), "grid": grid, "seconds": run.result.seconds}
        rows.append(row)
    return {"schema": 1, "kind": "fl-demo", "captures": rows, "capture_bytes": store.bytes_used()}


def write_report(results: dict[str, Any], out: Path) -> None:
    from ..report import write_json_atomic
    from ..report.pages import write_page

    write_json_atomic(out / "results.json", results)
    cfg = results["config"]
    head = (
        "| round | client | true labels | recovered | label acc | "
        + " | ".join(f"{a} PSNR | {a} SSIM" for a in cfg["attacks"])
        + " | ε (round) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    images = []
    for r in results["captures"]:
        cells = [
            str(r["round"]),
            str(r["partition"]),
            str(r.get("true_labels")),
            str(r.get("recovered_labels")),
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
    intro = (
        f"Flower simulation: {cfg['clients']} clients, {cfg['rounds']} rounds, protocol `{cfg['protocol']}`, "
        f"model `{cfg['model']}` on `{cfg['data']}`, batch {cfg['batch-size']} per client, client defenses "
        f"`{cfg['defenses'] or 'none'}`. The server captured every reply with CaptureStrategy and attacked it "
        f"({results['simulation_seconds']:.0f} s, {results['capture_bytes'] / 2**20:.1f} MiB of captures)."
    )
    write_page(
        out / "report.html",
        "gradleak Flower capture audit",
        paragraphs=[intro],
        images=images,
        table_md="\n".join(lines),
    )
