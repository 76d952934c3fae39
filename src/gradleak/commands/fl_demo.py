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


def register(subparsers) -> None:
    p = subparsers.add_parser("fl-demo", help="Flower simulation with a capturing server; audit report per client",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=64, help="model width (mlp/convnet)")
    p.add_argument("--data", default="digits", help="bundled dataset")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, default=1, help="each client's batch per round")
    p.add_argument("--protocol", choices=("fedsgd", "fedavg"), default="fedsgd")
    p.add_argument("--lr", type=float, default=0.1, help="FedSGD step the server asks clients to take")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--local-lr", type=float, default=1e-2)
    p.add_argument("--local-batch", type=int)
    p.add_argument("--defense", action="append", default=[], metavar="SPEC",
                   help="client-side defense, e.g. dpsgd:noise=1,clip=1, soteria:0.8, compress:0.99, noise:0.01")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--mixup", type=float)
    p.add_argument("--attack", action="append", help="attack run on each capture (default inverting_gradients)")
    p.add_argument("--no-attack", action="store_true", help="label recovery only")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--max-capture-mb", type=float, default=1024.0, help="stop capturing beyond this size")
    p.add_argument("--keep-rounds", type=int, help="keep only the last K rounds' captures on disk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/fl-demo")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..errors import InputError

    try:
        from ..fl import flower
    except ImportError as e:
        raise InputError(f"fl-demo needs Flower: pip install 'gradleak[flower]' ({e})") from None
    from ..fl.capture import LabelAttackAudit
    from ..fl.task import FlowerTask
    from ..protocols import FedAvg, FedSGD

    if a.clients < 2:
        raise InputError("fl-demo needs at least 2 clients (FedAvg's minimum)")
    protocol = FedAvg(a.local_steps, a.local_lr, a.local_batch) if a.protocol == "fedavg" else FedSGD()
    task = FlowerTask(model=a.model, model_kwargs={"width": a.width} if a.model in ("mlp", "convnet") else {},
                      dataset=a.data, image_size=a.image_size, batch_size=a.batch_size, protocol=protocol, lr=a.lr,
                      defenses=tuple(a.defense), label_smoothing=a.label_smoothing, mixup=a.mixup, seed=a.seed)
    attacks = () if a.no_attack else tuple(a.attack or ["inverting_gradients"])
    out = Path(a.out)
    audit = LabelAttackAudit(attacks=attacks, overrides={"iterations": a.iterations}, seed=a.seed)
    t0 = time.perf_counter()
    store = flower.run_simulation(task, num_clients=a.clients, num_rounds=a.rounds, capture_dir=out / "capture",
                                  audit=audit, max_bytes=int(a.max_capture_mb * 2 ** 20), keep_rounds=a.keep_rounds)
    seconds = time.perf_counter() - t0
    results = score_captures(task, store, a.clients, out)
    results.update({"config": {**task.to_config(), "clients": a.clients, "rounds": a.rounds,
                               "attacks": list(attacks), "iterations": a.iterations},
                    "simulation_seconds": seconds})
    write_report(results, out)
    for r in results["captures"]:
        atk = " ".join(f"{n} PSNR {v['mean_psnr']:.2f} dB" for n, v in r["attacks"].items() if v.get("mean_psnr"))
        print(f"round {r['round']} client {r['partition']}: labels {r['recovered_labels']} "
              f"(true {r['true_labels']}, accuracy {r['label_accuracy']}) {atk}")
    print(f"simulation {seconds:.0f} s; report: {out / 'report.html'}")
    return 0


def score_captures(task: Any, store: Any, num_clients: int, out: Path) -> dict[str, Any]:
    """Score every capture's audit against the client's real batch (only the demo knows it)."""
    from safetensors.torch import load_file

    from ..fl.task import client_batch
    from ..metrics import label_accuracy, score_images
    from ..report import save_grid

    data = task.load_data()
    rows = []
    for e in store.captured():
        pid = int(e["metrics"].get("partition-id", -1))
        row: dict[str, Any] = {"round": e["round"], "client": e["client"], "partition": pid,
                               "capture": f"capture/{e['path']}", "bytes": e["bytes"], "attacks": {},
                               "epsilon": e["metrics"].get("epsilon")}
        audit = e.get("audit") or {}
        if pid < 0:
            rows.append(row)
            continue
        batch = client_batch(task, data, pid, num_clients, e["round"])
        row["true_labels"] = batch.labels.tolist()
        methods = (audit.get("labels") or {}).get("methods", {})
        first = next((m for m in methods.values() if m.get("recovered") is not None), None)
        row["recovered_labels"] = None if first is None else first["recovered"]
        row["label_accuracy"] = None if first is None else label_accuracy(row["true_labels"], first["recovered"])
        recon = load_file(str(store.root / audit["reconstructions"])) if audit.get("reconstructions") else {}
        for att in audit.get("attacks", []):
            name = att["name"]
            if att.get("error") or name not in recon:
                row["attacks"][name] = {"error": att.get("error")}
                continue
            s = score_images(recon[name], batch.images)
            grid = f"round{e['round']}_client{pid}_{name}.png"
            save_grid(out / grid, batch.images, [recon[name][s.order]])
            row["attacks"][name] = {**s.to_json(), "grid": grid, "seconds": att.get("seconds")}
        rows.append(row)
    return {"schema": 1, "kind": "fl-demo", "captures": rows, "capture_bytes": store.bytes_used()}


def write_report(results: dict[str, Any], out: Path) -> None:
    from ..report import write_json_atomic
    from ..report.pages import write_page

    write_json_atomic(out / "results.json", results)
    cfg = results["config"]
    head = "| round | client | true labels | recovered | label acc | " + \
        " | ".join(f"{a} PSNR | {a} SSIM" for a in cfg["attacks"]) + " | ε (round) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    images = []
    for r in results["captures"]:
        cells = [str(r["round"]), str(r["partition"]), str(r.get("true_labels")), str(r.get("recovered_labels")),
                 "–" if r.get("label_accuracy") is None else f"{r['label_accuracy']:.2f}"]
        for a in cfg["attacks"]:
            s = r["attacks"].get(a, {})
            cells += ["–", "–"] if s.get("mean_psnr") is None else [f"{s['mean_psnr']:.2f}", f"{s['mean_ssim']:.3f}"]
            if s.get("grid"):
                images.append((out / s["grid"], f"round {r['round']}, client {r['partition']}, {a}: "
                                                 "top row the client's batch, bottom row what the server recovered"))
        cells.append("–" if r.get("epsilon") is None else f"{r['epsilon']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    intro = (f"Flower simulation: {cfg['clients']} clients, {cfg['rounds']} rounds, protocol `{cfg['protocol']}`, "
             f"model `{cfg['model']}` on `{cfg['dataset']}`, batch {cfg['batch-size']} per client, client defenses "
             f"`{cfg['defenses'] or 'none'}`. The server captured every reply with CaptureStrategy and attacked it "
             f"({results['simulation_seconds']:.0f} s, {results['capture_bytes'] / 2 ** 20:.1f} MiB of captures).")
    write_page(out / "report.html", "gradleak Flower capture audit", paragraphs=[intro], images=images,
               table_md="\n".join(lines))
