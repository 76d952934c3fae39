"""A single self-contained HTML page from an :class:`~gradleak.results.AuditResult`.

Images are embedded as base64 data URIs and CSS is inline: the page needs no network and can be
mailed as one file. This module only presents numbers that are already in the result.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..results import SCHEMA, AttackRun, AuditResult, LabelSection, Verdict
from .files import to_jsonable, write_bytes_atomic

__all__ = ["AuditImages", "render_html", "write_html_report"]

LPIPS_UNAVAILABLE = "unavailable (no weights given)"
_NA = "n/a"
_MAX_SOFT_ROWS = 16
_SOFT_TOP = 3
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class AuditImages:
    """The image files of an audit: ``grids[attack]`` and ``stages[attack][stage]``."""

    grids: dict[str, Path] = field(default_factory=dict)
    stages: dict[str, dict[str, Path]] = field(default_factory=dict)


def write_html_report(path: str | os.PathLike[str], result: AuditResult, images: AuditImages) -> None:
    """Render ``result`` to ``path`` atomically. Missing image files become a note, not an error."""
    write_bytes_atomic(path, render_html(result, images).encode("utf-8"))


def render_html(result: AuditResult, images: AuditImages) -> str:
    """The report page as a string (see :func:`write_html_report`)."""
    body = [
        _header(result.setting),
        _verdict(result.verdict),
        _scenario(result.setting, result.config),
        _labels(result.labels, result.class_names),
        _attacks(result.attacks, images),
        _errors(result),
        _footer(result),
    ]
    title = "gradleak audit report"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )


# --- sections ---------------------------------------------------------------------------------


def _header(setting: Mapping[str, Any]) -> str:
    what = " · ".join(_e(setting[k]) for k in ("model", "dataset") if setting.get(k) is not None)
    sub = f'<p class="sub">{what}</p>' if what else ""
    return f"<header><h1>gradleak audit report</h1>{sub}</header>"


def _verdict(verdict: Verdict) -> str:
    css = verdict.level if verdict.level in ("high", "medium", "low") else "unknown"
    text = f"<p>{_e(verdict.summary)}</p>" if verdict.summary else ""
    return (
        f'<section class="verdict level-{css}"><div class="badge">Leakage risk: '
        f"<strong>{_e((verdict.level or 'unknown').upper())}</strong></div>{text}</section>"
    )


def _scenario(setting: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    if not setting and not config:
        return ""
    details = []
    if setting.get("image_shape"):
        details.append("×".join(str(d) for d in setting["image_shape"]))
    if setting.get("num_classes") is not None:
        details.append(f"{setting['num_classes']} classes")
    dataset = _e(_fmt(setting.get("dataset")))
    if details:
        dataset += f' <span class="muted">({_e(", ".join(details))})</span>'
    protocol = dict(setting.get("protocol") or {})
    protocol_html = f"<strong>{_e(_fmt(protocol.pop('name', None)))}</strong>"
    if protocol:
        protocol_html += f' <span class="muted">({_e(_kv(protocol))})</span>'
    rows = [
        ("Model", _e(_fmt(setting.get("model")))),
        *([("Server's model", _training(setting["training"]))] if "training" in setting else []),
        ("Dataset", dataset),
        ("Batch size", _e(_fmt(setting.get("batch_size")))),
        ("Threat model", _threat(setting.get("threat") or {})),
        ("Protocol", protocol_html),
        ("Attacker assumes", _e(_kv(setting.get("attacker_assumes") or {}, empty="none"))),
        ("Defenses", "<br>".join(_e(_fmt(d)) for d in setting.get("defenses") or ()) or "none"),
        *([("DP guarantee", _privacy(setting["privacy"]))] if setting.get("privacy") else []),
        ("Label augmentation", _e(_kv(setting.get("augmentation") or {}, empty="none"))),
        ("Seed", _e(_fmt(setting.get("seed")))),
    ]
    table = '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    full = ""
    if config:
        full = f"<details><summary>Full configuration</summary><pre>{_e(_json(config))}</pre></details>"
    return f"<section><h2>Scenario</h2>{table}{full}</section>"


def _training(training: Mapping[str, Any] | None) -> str:
    """How the server's model was trained before the round (``Scenario.train_steps``), with its accuracy."""
    if not training:
        return "not trained before the round (its seeded initialisation, or the weights given)"
    return _e(
        f"trained {training['steps']} SGD steps (batch {training['batch_size']}, lr {training['lr']:g}, momentum "
        f"{training['momentum']:g}) on {training['train_images']} images disjoint from the client's batch: train "
        f"accuracy {training['train_accuracy']:.2f}, held-out test accuracy {training['test_accuracy']:.2f} on "
        f"{training['held_out_images']} images (the client's batch is drawn from them)"
    )


def _threat(threat: Mapping[str, Any]) -> str:
    """The server (honest, or what the malicious one did to the model) and the aggregation it saw."""
    server = threat.get("server", "honest")
    if isinstance(server, Mapping):
        record = dict(server)
        text = f"<strong>malicious: {_e(_fmt(record.pop('name', None)))}</strong>"
        text += f' <span class="muted">({_e(_kv(record))})</span>' if record else ""
    else:
        text = "honest-but-curious server"
    clients = int(threat.get("clients") or 1)
    if clients > 1:
        sizes = threat.get("client_batch_sizes")
        text += f"<br>secure aggregation: the mean of {clients} clients' updates" + (
            f' <span class="muted">(batch sizes {_e(_fmt(sizes))})</span>' if sizes else ""
        )
    else:
        text += "<br>one client's update"
    return text


def _privacy(guarantees: Sequence[Mapping[str, Any]]) -> str:
    """Each DP defense's ε and its bound on any reconstruction attack (Hayes et al. NeurIPS 2023)."""
    parts = []
    for g in guarantees:
        eps = "unbounded" if g.get("epsilon") is None else f"{g['epsilon']:.3g}"
        bounds = "; ".join(
            f"of {round(1 / b['kappa'])}: at most {b['bound']:.3g} (guessing: {b['kappa']:g})"
            for b in g.get("bounds") or ()
        )
        parts.append(
            f"<strong>{_e(g.get('defense'))}</strong>: ε = {_e(eps)} at δ = {_e(_fmt(g.get('delta')))} "
            f'<span class="muted">({_e(g.get("note"))}, noise multiplier {_e(_fmt(g.get("noise")))})</span>'
            f"<br>chance that any attack picks the protected {_e(g.get('unit'))} out of equally likely candidates "
            f"{_e(bounds)}"
        )
    note = (
        '<br><span class="muted">Bounds for an informed adversary who knows everything but the protected '
        "record and picks it from equally likely candidates (Hayes, Mahloujifar &amp; Balle, NeurIPS 2023).</span>"
    )
    return "<br>".join(parts) + note


def _labels(labels: LabelSection, names: Sequence[str]) -> str:
    if not labels.runs:
        return '<section><h2>Labels</h2><p class="muted">No label recovery was run.</p></section>'
    true = None if labels.true is None else list(labels.true)
    chosen = labels.chosen
    rows = []
    if true is not None:
        rows.append(
            f'<tr class="truth"><th>true labels</th><td>{_chips(true, None, names)}</td><td></td><td></td></tr>'
        )
    seen = set(true or ())
    for run in labels.runs:
        name = _e(run.method)
        if run.requested != run.method:
            name += f' <span class="muted">({_e(run.requested)})</span>'
        if run is chosen:
            name += ' <span class="tag">used by attacks</span>'
        name += _oracle_tag(run.oracle_inputs)
        if run.result is None:
            cell = f'<span class="err">failed: {_e(run.error)}</span>'
        else:
            seen.update(run.result.labels)
            cell = _chips(run.result.labels, true, names)
        seconds = None if run.result is None else run.result.seconds
        rows.append(
            f'<tr><th>{name}</th><td>{cell}</td><td class="num">{_pct(run.accuracy)}</td>'
            f'<td class="num">{_seconds(seconds)}</td></tr>'
        )
        if run.result is not None and run.result.soft is not None:
            rows.append(f'<tr class="soft"><td></td><td colspan="3">{_soft(run.result.soft.tolist(), names)}</td></tr>')
    table = (
        '<table class="grid labels"><thead><tr><th>Method</th><th>Labels</th>'
        '<th class="num">Label accuracy</th><th class="num">Seconds</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )
    notes = []
    if chosen is not None:
        notes.append(f"Attacks used the labels recovered by <strong>{_e(chosen.method)}</strong>.")
    if true:
        notes.append(
            "Recovered labels are compared as a multiset; "
            '<span class="chip miss">red</span> marks a label beyond the true count.'
        )
    note_html = "".join(f'<p class="note">{n}</p>' for n in notes)
    return f"<section><h2>Labels</h2>{table}{note_html}{_legend(seen, names)}</section>"


def _attacks(runs: Sequence[AttackRun], images: AuditImages) -> str:
    if not runs:
        return '<section><h2>Attacks</h2><p class="muted">No attacks were run.</p></section>'
    parts = ["<section><h2>Attacks</h2>", _attack_summary(runs)]
    parts += [_attack(i, run, images) for i, run in enumerate(runs)]
    parts.append("</section>")
    return "".join(parts)


def _numbers(run: AttackRun) -> list[tuple[str, str]]:
    """The headline numbers of a run, as (label, formatted value)."""
    scores, result = run.scores, run.result
    lpips = _NA if scores is None else _e(LPIPS_UNAVAILABLE) if scores.lpips is None else _dec(scores.mean_lpips)
    return [
        ("Mean PSNR", _psnr(run.mean_psnr)),
        ("Grey image PSNR", _psnr(None if scores is None else scores.mean_grey_psnr)),
        ("Mean SSIM", _dec(None if scores is None else scores.mean_ssim)),
        ("Mean LPIPS", lpips),
        ("Iterations", _fmt(None if result is None else result.iterations, _NA)),
        ("Seconds", _seconds(None if result is None else result.seconds)),
    ]


def _attack_summary(runs: Sequence[AttackRun]) -> str:
    head = "".join(f'<th class="num">{label}</th>' for label, _ in _numbers(runs[0]))
    rows = "".join(
        f'<tr><th><a href="#attack-{i}">{_e(run.name)}</a>{_oracle_tag(run.oracle_inputs)}</th>'
        + "".join(f'<td class="num">{value}</td>' for _, value in _numbers(run))
        + f"<td>{'<span class=err>failed</span>' if run.error else 'ok'}</td></tr>"
        for i, run in enumerate(runs)
    )
    return (
        f'<table class="grid"><thead><tr><th>Attack</th>{head}<th>Status</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _attack(i: int, run: AttackRun, images: AuditImages) -> str:
    parts = [f'<article class="attack" id="attack-{i}"><h3>{_e(run.name)}</h3>']
    if run.error:
        parts.append(f'<p class="err">This attack failed: {_e(run.error)} (details under Errors).</p>')
    for key, what in run.oracle_inputs.items():
        parts.append(f'<p class="note"><span class="tag oracle">oracle input</span> {_e(key)}: {_e(what)}</p>')
    result = run.result
    stats = _numbers(run)
    if result is not None:
        stats += [("Restarts", _fmt(result.restarts)), ("Final loss", _dec(result.final_loss, 4, "g"))]
    if run.estimate is not None:
        stats.append(("Estimated seconds", _seconds(run.estimate.seconds)))
    parts.append(
        '<div class="stats">' + "".join(f"<div><span>{k}</span><strong>{v}</strong></div>" for k, v in stats) + "</div>"
    )
    if run.name in images.grids:
        caption = (
            "Top row: originals. Below: reconstructions (paired by best match)."
            if run.scores is not None
            else "Reconstructions (no ground truth to compare with)."
        )
        parts.append(_figure(images.grids[run.name], caption))
    for stage, path in images.stages.get(run.name, {}).items():
        parts.append(_figure(path, stage))
    if result is not None:
        curve = _loss_plot(result.loss_curve)
        if curve:
            parts.append(
                f'<figure><img class="plot" alt="objective curve" src="{curve}"><figcaption>Attack '
                "objective over iterations (gradient matching plus the attack's priors; log scale)"
                "</figcaption></figure>"
            )
    if run.scores is not None:
        parts.append(_per_image(run.scores.psnr, run.scores.ssim, run.scores.lpips, run.scores.originals))
    if result is not None and result.config:
        parts.append(f"<details><summary>Attack configuration</summary><pre>{_e(_json(result.config))}</pre></details>")
    parts.append("</article>")
    return "".join(parts)


def _oracle_tag(oracle: dict[str, str]) -> str:
    """A badge naming inputs a server cannot observe (an upper-bound run), or nothing."""
    if not oracle:
        return ""
    return f' <span class="tag oracle" title="{_e(", ".join(oracle))}">oracle input</span>'


def _per_image(
    psnr: Sequence[float], ssim: Sequence[float], lpips: Sequence[float] | None, originals: Sequence[int] | None
) -> str:
    """Per-image scores; the Image column is the original's index in the batch."""
    head = '<th class="num">Image</th><th class="num">PSNR</th><th class="num">SSIM</th>' + (
        '<th class="num">LPIPS</th>' if lpips is not None else ""
    )
    rows = "".join(
        f'<tr><td class="num">{i if originals is None else originals[i]}</td><td class="num">{_psnr(p)}</td>'
        f'<td class="num">{_dec(s)}</td>'
        + (f'<td class="num">{_dec(lpips[i])}</td>' if lpips is not None else "")
        + "</tr>"
        for i, (p, s) in enumerate(zip(psnr, ssim))
    )
    opened = " open" if len(psnr) <= 16 else ""
    return (
        f"<details{opened}><summary>Per-image scores ({len(psnr)})</summary>"
        f'<table class="grid small"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></details>'
    )


def _errors(result: AuditResult) -> str:
    errors: list[tuple[str, str | None, str | None]] = [
        (f"label method {r.method}", r.error, None) for r in result.labels.runs if r.error
    ]
    errors += [(f"attack {a.name}", a.error, a.traceback) for a in result.attacks if a.error]
    if not errors:
        return ""
    items = "".join(
        f"<li><strong>{_e(where)}</strong>: {_e(err)}{f'<pre>{_e(trace)}</pre>' if trace else ''}</li>"
        for where, err, trace in errors
    )
    return f'<section class="errors"><h2>Errors</h2><ul>{items}</ul></section>'


def _footer(result: AuditResult) -> str:
    bits = [
        f"gradleak {_e(result.version)}" if result.version else "",
        f"results schema {SCHEMA}",
        f"created {_e(result.created)}" if result.created else "",
    ]
    return "<footer>" + " · ".join(b for b in bits if b) + "</footer>"


# --- pieces -----------------------------------------------------------------------------------


def _figure(path: Path, caption: str) -> str:
    src = _data_uri(path)
    if src is None:
        return (
            f'<p class="note missing">Image not available: {_e(path.name)} '
            f"(not found or not a PNG/JPEG file in the output folder).</p>"
        )
    return (
        f'<figure><img class="pixels" alt="{_e(caption)}" src="{src}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _data_uri(file: Path) -> str | None:
    try:
        data = file.read_bytes()
    except OSError:
        return None
    if data.startswith(_PNG_MAGIC):
        mime = "image/png"
    elif data.startswith(_JPEG_MAGIC):
        mime = "image/jpeg"
    else:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _loss_plot(curve: Sequence[tuple[int, float]]) -> str | None:
    """The objective curve as a PNG data URI, or ``None`` if it has no positive finite point."""
    points = [(float(step), float(loss)) for step, loss in curve if math.isfinite(loss) and loss > 0]
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        [p[0] for p in points],
        [p[1] for p in points],
        color="#1f5fa8",
        linewidth=1.4,
        marker="." if len(points) < 40 else None,
    )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (matching + priors)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _chips(labels: Sequence[int], truth: Sequence[int] | None, names: Sequence[str]) -> str:
    if not labels:
        return '<span class="muted">none</span>'
    budget = Counter(truth) if truth is not None else None
    out = []
    for lab in labels:
        css = "chip"
        if budget is not None:
            if budget[lab] > 0:
                budget[lab] -= 1
            else:
                css += " miss"
        title = _class_name(lab, names)
        tip = f' title="{_e(title)}"' if title else ""
        out.append(f'<span class="{css}"{tip}>{_e(lab)}</span>')
    return "".join(out)


def _soft(vectors: list[list[float]], names: Sequence[str]) -> str:
    lines = []
    for i, vec in enumerate(vectors[:_MAX_SOFT_ROWS]):
        scored = sorted(((p, k) for k, p in enumerate(vec) if math.isfinite(p)), reverse=True)
        top = ", ".join(
            f"{k}{' ' + _class_name(k, names) if _class_name(k, names) else ''}: {p:.2f}" for p, k in scored[:_SOFT_TOP]
        )
        lines.append(f"<li>#{i}: {_e(top)}</li>")
    more = len(vectors) - _MAX_SOFT_ROWS
    if more > 0:
        lines.append(f'<li class="muted">… {more} more</li>')
    return (
        f"<details><summary>Soft labels (top {_SOFT_TOP} per sample)</summary>"
        f'<ul class="soft">{"".join(lines)}</ul></details>'
    )


def _legend(seen: set[int], names: Sequence[str]) -> str:
    pairs = [(lab, _class_name(lab, names)) for lab in sorted(seen)]
    pairs = [(lab, n) for lab, n in pairs if n]
    if not pairs:
        return ""
    items = ", ".join(f"{_e(lab)} = {_e(n)}" for lab, n in pairs[:60])
    return f'<p class="note">Classes: {items}{" …" if len(pairs) > 60 else ""}</p>'


def _class_name(label: int, names: Sequence[str]) -> str:
    return names[label] if 0 <= label < len(names) else ""


# --- formatting -------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _fmt(x: Any, none: str = "none") -> str:
    """A setting value in plain words; records (dicts with a ``name``) as ``name(key=value, ...)``."""
    if x is None:
        return none
    if isinstance(x, float):
        return f"{x:g}" if math.isfinite(x) else _NA
    if isinstance(x, (list, tuple)):
        return ", ".join(_fmt(v) for v in x) or "none"
    if isinstance(x, Mapping):
        params = _kv({k: v for k, v in x.items() if k != "name"})
        if "name" not in x:
            return params
        return f"{x['name']}({params})" if params else str(x["name"])
    return str(x)


def _kv(d: Mapping[str, Any], empty: str = "") -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in d.items()) or empty


def _dec(x: float | None, digits: int = 3, kind: str = "f") -> str:
    return f"{x:.{digits}{kind}}" if x is not None and math.isfinite(x) else _NA


def _psnr(x: float | None) -> str:
    return f"{x:.2f} dB" if x is not None and math.isfinite(x) else _NA


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None and math.isfinite(x) else _NA


def _seconds(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return _NA
    return f"{x:.3g} s" if x < 10 else f"{x:.1f} s"


def _json(x: Any) -> str:
    return json.dumps(to_jsonable(x), indent=2, ensure_ascii=False)


_CSS = """
:root{--fg:#1d232b;--muted:#5f6b7a;--line:#d9dee5;--bg:#f6f7f9;--accent:#1f5fa8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 28px 40px;background:#fff;min-height:100vh}
h1{margin:0;font-size:26px}h2{margin:32px 0 12px;font-size:20px;border-bottom:2px solid var(--line);
padding-bottom:4px}h3{margin:0 0 10px;font-size:18px}
.sub{margin:2px 0 0;color:var(--muted)}
.verdict{margin:18px 0 8px;padding:14px 18px;border-left:6px solid;border-radius:6px}
.verdict p{margin:6px 0 0}.badge{font-size:17px;letter-spacing:.02em}
.level-high{background:#fdecec;border-color:#c62828}.level-high strong{color:#b71c1c}
.level-medium{background:#fff5e2;border-color:#e08a00}.level-medium strong{color:#a15c00}
.level-low{background:#e8f5ec;border-color:#2e7d32}.level-low strong{color:#1b5e20}
.level-unknown{background:#eef0f3;border-color:#7a8696}
table{border-collapse:collapse;margin:6px 0}
th,td{padding:5px 10px;text-align:left;vertical-align:top}
table.kv th{color:var(--muted);font-weight:600;white-space:nowrap;padding-left:0}
table.grid{width:100%}table.grid.small{width:auto}
table.grid thead th{background:#eef1f5;border-bottom:1px solid var(--line);font-size:13px}
table.grid td,table.grid tbody th{border-bottom:1px solid var(--line)}
table.grid tbody th{font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.truth{background:#f7f9fc}tr.soft td{border-bottom:1px solid var(--line);padding-top:0}
.chip{display:inline-block;min-width:26px;margin:1px 3px 1px 0;padding:0 6px;text-align:center;
border-radius:10px;background:#e6edf7;font-variant-numeric:tabular-nums;font-size:13px}
.chip.miss{background:#fbd5d5;color:#8e1111}
.tag{display:inline-block;margin-left:6px;padding:0 6px;border-radius:8px;background:#e1f0e4;
color:#1b5e20;font-size:11px;font-weight:500;vertical-align:middle}
.tag.oracle{background:#fbe3c8;color:#8a4b00}
.note{margin:6px 0;color:var(--muted);font-size:13px}.muted{color:var(--muted)}
.missing{color:#8e1111}.err{color:#b71c1c}
.attack{margin:22px 0;padding:16px 18px;border:1px solid var(--line);border-radius:8px}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:10px}
.stats div{padding:6px 12px;background:#f3f5f8;border-radius:6px;min-width:110px}
.stats span{display:block;font-size:12px;color:var(--muted)}
.stats strong{font-variant-numeric:tabular-nums}
figure{margin:12px 0}figcaption{font-size:13px;color:var(--muted)}
img{max-width:100%;height:auto;display:block}img.pixels{image-rendering:pixelated;
border:1px solid var(--line)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
details{margin:8px 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f3f5f8;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
ul.soft{margin:4px 0;padding-left:20px;font-size:13px}
.errors li{margin:6px 0}
footer{margin-top:36px;padding-top:10px;border-top:1px solid var(--line);color:var(--muted);
font-size:12px}
"""
