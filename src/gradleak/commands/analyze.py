"""``gradleak analyze``: per-layer leakage analysis of an architecture before any training —
unknowns vs constraints, numerical rank (or a counting bound), which constraints dominate, Chen &
Campbell's COPA index and R-GAP's rank view (see :mod:`gradleak.analyze`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_args import image_size, int_range, nonnegative_int, output_dir, seed
from ..observation_schema import MAX_CLASSES


def _shape(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three integers), got {text[:40]!r}")
    channels, height, width = parts
    return (int_range(1, 64)(channels), image_size(height), image_size(width))


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="per-layer rank analysis and security metric of an architecture")
    p.add_argument("--model", default="cnn6", help="zoo name (see `gradleak list`) or module:factory")
    p.add_argument("--weights", help="model weights (.safetensors); default: the seeded initialisation")
    p.add_argument("--input-shape", type=_shape, default=(3, 32, 32), metavar="C,H,W")
    p.add_argument("--num-classes", type=int_range(2, MAX_CLASSES), default=10)
    p.add_argument(
        "--bn-mode",
        choices=("train", "eval"),
        default="eval",
        help="BatchNorm mode of the client (default eval, as every command)",
    )
    p.add_argument(
        "--exact-limit",
        type=nonnegative_int(),
        default=6000,
        help="largest reduced system whose rank is computed numerically (else a counting bound)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the initialisation and of the probe sample")
    p.add_argument("--out", type=output_dir, help="write OUT/analysis.json and OUT/analysis.png")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    import torch

    from ..analyze import analyze_model
    from ..models import build_model, load_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        model = build_model(a.model, a.num_classes, a.input_shape)
    if a.weights:
        load_weights(model, a.weights)
    model.train(a.bn_mode == "train")
    res = analyze_model(model, a.input_shape, a.num_classes, name=a.model, exact_limit=a.exact_limit, seed=a.seed)
    data = res.to_json()
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        from ..report import write_json_atomic

        write_json_atomic(out / "analysis.json", data)
        plot_analysis(data, out / "analysis.png")
    if a.json:
        print(json.dumps(data, indent=2))
        return 0
    print(format_table(data))
    if a.out:
        print(f"wrote {Path(a.out) / 'analysis.json'} and {Path(a.out) / 'analysis.png'}")
    return 0


def format_table(data: dict) -> str:
    head = (
        f"{'layer':<24} {'type':<6} {'unknowns':>8} {'W rows':>8} {'usable':>8} {'∇ rows':>8} "
        f"{'rank ∇':>8} {'rank':>8} {'deficit':>8}  dominant / weight path"
    )
    lines = [f"{data['model']} {tuple(data['input_shape'])}, {data['num_classes']} classes", head, "-" * len(head)]
    for l in data["layers"]:
        mark = "" if l["exact"] else "≤"
        lines.append(
            f"{l['name'][:24]:<24} {l['type'][:6]:<6} {l['unknowns']:>8} {l['weight_rows']:>8} "
            f"{l['weight_rows_usable']:>8} {l['gradient_rows']:>8} "
            f"{('' if l['rank_gradient_exact'] else '≤') + str(l['rank_gradient']):>8} "
            f"{mark + str(l['rank']):>8} {l['deficiency']:>8}  {l['dominant']}; {l['weight_path']}"
        )
    exact = "exact" if data["all_exact"] else "bounds where marked ≤ (the true index is at least as safe)"
    lines += [
        "",
        f"COPA index (Chen & Campbell): {data['copa_index']}   (0 = every layer determined: leaks; "
        "more negative = safer)",
        f"R-GAP rank index (undetermined input directions): {data['rgap_rank_index']}   [{exact}]",
        "",
        "Worst case for a batch (exact / ICA batch attacks on the first layer):",
        *(
            f"  {b['attack']:<14} "
            + (f"applies to {b['layer']} up to B = {b['max_batch']}: " if b["applies"] else "does not apply: ")
            + f"{b['reason']}. Measured: {b['measured']}"
            for b in data.get("batch_recovery", [])
        ),
        f"{data['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def plot_analysis(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = data["layers"]
    names = [l["name"] for l in layers]
    x = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    ax.bar([i - 0.2 for i in x], [l["unknowns"] for l in layers], 0.4, label="unknowns (input size)", color="#bbb")
    ax.bar(
        [i + 0.2 for i in x],
        [l["rank"] for l in layers],
        0.4,
        label="rank of constraints",
        color=["#2a7" if l["deficiency"] == 0 else "#d54" for l in layers],
        hatch=None,
    )
    for i, l in enumerate(layers):
        if not l["exact"]:
            ax.text(i + 0.2, l["rank"], "≤", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_title(f"{data['model']}: COPA index {data['copa_index']}, rank index {data['rgap_rank_index']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
