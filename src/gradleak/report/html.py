"""A single self-contained HTML page from a ``results`` dict (schema 1).

Images are embedded as base64 data URIs and CSS is inline: the page needs no network and can be
mailed as one file. This module only presents numbers that are already in ``results``.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .files import to_jsonable, write_bytes_atomic

__all__ = ["render_html", "write_html_report"]

LPIPS_UNAVAILABLE = "unavailable (no weights given)"
_NA = "n/a"
_MAX_SOFT_ROWS = 16
_SOFT_TOP = 3
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def write_html_report(
    path: str | os.PathLike[str],
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Render ``results`` to ``path`` atomically; image paths are relative to ``out_dir``.

    ``out_dir`` defaults to the folder of ``path``. Missing images become a note, not an error.
    """
    folder = Path(path).parent if out_dir is None else Path(out_dir)
    write_bytes_atomic(path, render_html(results, folder).encode("utf-8"))


def render_html(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> str:
    """The report page as a string (see :func:`write_html_report`)."""
    out = Path(out_dir)
    errors: list[tuple[str, Any]] = []
    labels = _map(results.get("labels"))
    attacks = [a for a in _seq(results.get("attacks")) if isinstance(a, Mapping)]
    body = [
        _header(results),
        _verdict(_map(results.get("verdict"))),
        _scenario(_map(results.get("scenario")), _map(results.get("config"))),
        _labels(labels, _map(results.get("scenario")), errors),
        _attacks(attacks, out, errors),
        _errors(errors, results.get("error")),
        _footer(results),
    ]
    title = "gradleak audit report"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )


# --- sections ---------------------------------------------------------------------------------

def _header(results: Mapping[str, Any]) -> str:
    scenario = _map(results.get("scenario"))
    config = _map(results.get("config"))
    what = " · ".join(
        _e(v) for v in (scenario.get("model", config.get("model")),
                        scenario.get("dataset", config.get("dataset"))) if v is not None
    )
    sub = f"<p class=\"sub\">{what}</p>" if what else ""
    return f"<header><h1>gradleak audit report</h1>{sub}</header>"


def _verdict(verdict: Mapping[str, Any]) -> str:
    if not verdict:
        return "<section class=\"verdict level-unknown\"><p>No verdict was recorded.</p></section>"
    level = str(verdict.get("level") or "unknown")
    css = {"high": "high", "critical": "high", "medium": "medium", "moderate": "medium",
           "low": "low", "none": "low", "negligible": "low"}.get(level.lower(), "unknown")
    summary = verdict.get("summary")
    text = f"<p>{_e(summary)}</p>" if summary else ""
    return (
        f"<section class=\"verdict level-{css}\"><div class=\"badge\">Leakage risk: "
        f"<strong>{_e(level.upper())}</strong></div>{text}</section>"
    )


def _scenario(scenario: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    if not scenario and not config:
        return ""

    def pick(key: str) -> Any:
        return scenario.get(key, config.get(key))

    dataset = _e(_fmt(pick("dataset")))
    details = []
    if scenario.get("image_shape"):
        details.append("×".join(str(int(d)) for d in scenario["image_shape"]))
    if scenario.get("num_classes") is not None:
        details.append(f"{_fmt(scenario['num_classes'])} classes")
    if details:
        dataset += f" <span class=\"muted\">({_e(', '.join(details))})</span>"
    protocol = pick("protocol")
    if isinstance(protocol, Mapping):
        params = {k: v for k, v in protocol.items() if k != "name"}
        protocol_html = f"<strong>{_e(_fmt(protocol.get('name')))}</strong>"
        if params:
            protocol_html += f" <span class=\"muted\">({_e(_kv(params))})</span>"
    else:
        protocol_html = _e(_fmt(protocol))
    defenses = _seq(pick("defenses"))
    defense_html = "<br>".join(_e(_defense(d)) for d in defenses) or "none"
    aug = pick("augmentation")
    if aug is None:
        aug = {k: config[k] for k in ("label_smoothing", "mixup") if k in config}
    assumes = scenario.get("attacker_assumes")
    assumes_html = _e(_kv(assumes) if isinstance(assumes, Mapping) else _fmt(assumes))
    aug_html = _e(_kv(aug, empty="none") if isinstance(aug, Mapping) else _fmt(aug))
    rows = [
        ("Model", _e(_fmt(pick("model")))),
        ("Dataset", dataset),
        ("Batch size", _e(_fmt(pick("batch_size")))),
        ("Protocol", protocol_html),
        ("Attacker assumes", assumes_html),
        ("Defenses", defense_html),
        ("Label augmentation", aug_html),
        ("Seed", _e(_fmt(pick("seed")))),
    ]
    table = "<table class=\"kv\">" + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    full = ""
    if config:
        full = ("<details><summary>Full configuration</summary>"
                f"<pre>{_e(_json(config))}</pre></details>")
    return f"<section><h2>Scenario</h2>{table}{full}</section>"


def _labels(labels: Mapping[str, Any], scenario: Mapping[str, Any], errors: list) -> str:
    if not labels:
        return "<section><h2>Labels</h2><p class=\"muted\">No label recovery was run.</p></section>"
    names = [str(n) for n in _seq(scenario.get("class_names"))]
    true = [_label_key(t) for t in _seq(labels.get("true"))]
    used = labels.get("used_by_attacks")
    rows = [
        "<tr class=\"truth\"><th>true labels</th>"
        f"<td>{_chips(true, None, names)}</td><td></td><td></td></tr>"
    ]
    seen = set(true)
    for name, m in _map(labels.get("methods")).items():
        m = _map(m)
        tag = " <span class=\"tag\">used by attacks</span>" if used == name else ""
        if m.get("error"):
            errors.append((f"label method {name}", m["error"]))
            cell = f"<span class=\"err\">failed: {_e(_error_line(m['error']))}</span>"
        else:
            recovered = [_label_key(r) for r in _seq(m.get("recovered"))]
            seen.update(recovered)
            cell = _chips(recovered, true if true else None, names)
        rows.append(
            f"<tr><th>{_e(name)}{tag}</th><td>{cell}</td>"
            f"<td class=\"num\">{_pct(m.get('label_accuracy'))}</td>"
            f"<td class=\"num\">{_seconds(m.get('seconds'))}</td></tr>"
        )
        soft = _soft(m.get("soft"), names)
        if soft:
            rows.append(f"<tr class=\"soft\"><td></td><td colspan=\"3\">{soft}</td></tr>")
    table = (
        "<table class=\"grid labels\"><thead><tr><th>Method</th><th>Labels</th>"
        "<th class=\"num\">Label accuracy</th><th class=\"num\">Seconds</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )
    notes = []
    if used:
        notes.append(f"Attacks used the labels recovered by <strong>{_e(used)}</strong>.")
    if true:
        notes.append("Recovered labels are compared as a multiset; "
                     "<span class=\"chip miss\">red</span> marks a label beyond the true count.")
    legend = _legend(seen, names)
    note_html = "".join(f"<p class=\"note\">{n}</p>" for n in notes)
    return f"<section><h2>Labels</h2>{table}{note_html}{legend}</section>"


def _attacks(attacks: list[Mapping[str, Any]], out: Path, errors: list) -> str:
    if not attacks:
        return "<section><h2>Attacks</h2><p class=\"muted\">No attacks were run.</p></section>"
    parts = ["<section><h2>Attacks</h2>", _attack_summary(attacks)]
    for i, a in enumerate(attacks):
        parts.append(_attack(i, a, out, errors))
    parts.append("</section>")
    return "".join(parts)


def _attack_summary(attacks: list[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><th><a href=\"#{_anchor(i)}\">{_e(_fmt(a.get('name')))}</a></th>"
        f"<td class=\"num\">{_psnr(a.get('mean_psnr'))}</td>"
        f"<td class=\"num\">{_dec(a.get('mean_ssim'))}</td>"
        f"<td class=\"num\">{_lpips(a.get('mean_lpips'), failed=bool(a.get('error')))}</td>"
        f"<td class=\"num\">{_int(a.get('iterations'))}</td>"
        f"<td class=\"num\">{_seconds(a.get('seconds'))}</td>"
        f"<td>{'<span class=err>failed</span>' if a.get('error') else 'ok'}</td></tr>"
        for i, a in enumerate(attacks)
    )
    return (
        "<table class=\"grid\"><thead><tr><th>Attack</th><th class=\"num\">Mean PSNR</th>"
        "<th class=\"num\">Mean SSIM</th><th class=\"num\">Mean LPIPS</th>"
        "<th class=\"num\">Iterations</th><th class=\"num\">Seconds</th><th>Status</th></tr>"
        "</thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _attack(i: int, a: Mapping[str, Any], out: Path, errors: list) -> str:
    name = _fmt(a.get("name"))
    parts = [f"<article class=\"attack\" id=\"{_anchor(i)}\"><h3>{_e(name)}</h3>"]
    if a.get("error"):
        errors.append((f"attack {name}", a["error"]))
        parts.append(f"<p class=\"err\">This attack failed: {_e(_error_line(a['error']))}"
                     " (details under Errors).</p>")
    stats = [
        ("Mean PSNR", _psnr(a.get("mean_psnr"))), ("Mean SSIM", _dec(a.get("mean_ssim"))),
        ("Mean LPIPS", _lpips(a.get("mean_lpips"), failed=bool(a.get("error")))),
        ("Iterations", _int(a.get("iterations"))), ("Restarts", _int(a.get("restarts"))),
        ("Seconds", _seconds(a.get("seconds"))),
        *([("Estimated seconds", _seconds(a["estimated_seconds"]))] if a.get("estimated_seconds") is not None else []),
        ("Final loss", _dec(a.get("final_loss"), 4, "g")),
    ]
    parts.append("<div class=\"stats\">" + "".join(
        f"<div><span>{k}</span><strong>{v}</strong></div>" for k, v in stats) + "</div>")
    images = _map(a.get("images"))
    if images.get("grid"):
        parts.append(_figure(out, images["grid"],
                             "Top row: originals. Below: reconstructions (paired by best match)."))
    for stage, rel in _map(images.get("stages")).items():
        parts.append(_figure(out, rel, str(stage)))
    curve = _loss_plot(a.get("loss_curve"))
    if curve:
        parts.append(f"<figure><img class=\"plot\" alt=\"objective curve\" src=\"{curve}\">"
                     "<figcaption>Attack objective over iterations (gradient matching plus the attack's priors; log scale)</figcaption></figure>")
    parts.append(_per_image(a))
    if a.get("config"):
        parts.append("<details><summary>Attack configuration</summary>"
                     f"<pre>{_e(_json(a['config']))}</pre></details>")
    parts.append("</article>")
    return "".join(parts)


def _per_image(a: Mapping[str, Any]) -> str:
    psnr, ssim, lpips = (_seq(a.get(k)) for k in ("psnr", "ssim", "lpips"))
    n = max(len(psnr), len(ssim), len(lpips))
    if not n:
        return ""
    head = ("<th class=\"num\">Image</th><th class=\"num\">PSNR</th><th class=\"num\">SSIM</th>"
            + ("<th class=\"num\">LPIPS</th>" if lpips else ""))
    rows = "".join(
        f"<tr><td class=\"num\">{i}</td><td class=\"num\">{_psnr(_at(psnr, i))}</td>"
        f"<td class=\"num\">{_dec(_at(ssim, i))}</td>"
        + (f"<td class=\"num\">{_dec(_at(lpips, i))}</td>" if lpips else "") + "</tr>"
        for i in range(n)
    )
    opened = " open" if n <= 16 else ""
    return (f"<details{opened}><summary>Per-image scores ({n})</summary>"
            f"<table class=\"grid small\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            "</details>")


def _errors(errors: list[tuple[str, Any]], top: Any) -> str:
    if top:
        errors = [("run", top), *errors]
    if not errors:
        return ""
    items = []
    for where, err in errors:
        trace = _map(err).get("traceback") if isinstance(err, Mapping) else None
        pre = f"<pre>{_e(trace)}</pre>" if trace else ""
        items.append(f"<li><strong>{_e(where)}</strong>: {_e(_error_line(err))}{pre}</li>")
    return f"<section class=\"errors\"><h2>Errors</h2><ul>{''.join(items)}</ul></section>"


def _footer(results: Mapping[str, Any]) -> str:
    bits = [(results.get("gradleak_version"), "gradleak {}"),
            (results.get("schema"), "results schema {}"), (results.get("created"), "created {}")]
    return "<footer>" + " · ".join(f.format(_e(v)) for v, f in bits if v is not None) + "</footer>"


# --- pieces -----------------------------------------------------------------------------------

def _figure(out: Path, rel: Any, caption: str) -> str:
    src = _data_uri(out / str(rel))
    if src is None:
        return (f"<p class=\"note missing\">Image not available: {_e(rel)} "
                f"(not found or not a PNG/JPEG file in the output folder).</p>")
    return (f"<figure><img class=\"pixels\" alt=\"{_e(caption)}\" src=\"{src}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


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


def _loss_plot(curve: Any) -> str | None:
    """The matching-loss curve as a PNG data URI, or ``None`` if it has no positive finite point."""
    points = []
    for i, p in enumerate(_seq(curve)):
        step, loss = (p[0], p[1]) if isinstance(p, Sequence) and len(p) >= 2 else (i, p)
        if _finite(step) and _finite(loss) and float(loss) > 0:
            points.append((float(step), float(loss)))
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#1f5fa8", linewidth=1.4,
            marker="." if len(points) < 40 else None)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (matching + priors)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _chips(labels: list[Any], truth: list[Any] | None, names: list[str]) -> str:
    if not labels:
        return "<span class=\"muted\">none</span>"
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
        tip = f" title=\"{_e(title)}\"" if title else ""
        out.append(f"<span class=\"{css}\"{tip}>{_e(lab)}</span>")
    return "".join(out)


def _soft(soft: Any, names: list[str]) -> str:
    vectors = [v for v in _seq(soft) if isinstance(v, Sequence) and not isinstance(v, str)]
    if not vectors:
        return ""
    lines = []
    for i, vec in enumerate(vectors[:_MAX_SOFT_ROWS]):
        scored = sorted(((float(p), k) for k, p in enumerate(vec) if _finite(p)), reverse=True)
        top = ", ".join(
            f"{k}{' ' + _class_name(k, names) if _class_name(k, names) else ''}: {p:.2f}"
            for p, k in scored[:_SOFT_TOP])
        lines.append(f"<li>#{i}: {_e(top)}</li>")
    more = len(vectors) - _MAX_SOFT_ROWS
    if more > 0:
        lines.append(f"<li class=\"muted\">… {more} more</li>")
    return (f"<details><summary>Soft labels (top {_SOFT_TOP} per sample)</summary>"
            f"<ul class=\"soft\">{''.join(lines)}</ul></details>")


def _legend(seen: set[Any], names: list[str]) -> str:
    pairs = [(lab, _class_name(lab, names)) for lab in sorted(seen, key=str)]
    pairs = [(lab, n) for lab, n in pairs if n]
    if not pairs:
        return ""
    items = ", ".join(f"{_e(lab)} = {_e(n)}" for lab, n in pairs[:60])
    return f"<p class=\"note\">Classes: {items}{' …' if len(pairs) > 60 else ''}</p>"


def _class_name(label: Any, names: list[str]) -> str:
    if isinstance(label, int) and 0 <= label < len(names):
        return names[label]
    return ""


def _label_key(x: Any) -> Any:
    """Labels as ints where they are whole numbers, so 3 and 3.0 compare equal."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def _defense(d: Any) -> str:
    if isinstance(d, Mapping):
        params = {k: v for k, v in d.items() if k != "name"}
        return f"{_fmt(d.get('name'))}({_kv(params)})" if params else _fmt(d.get("name"))
    return _fmt(d)


def _anchor(i: int) -> str:
    return f"attack-{i}"


# --- formatting -------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any) -> str:
    if x is None:
        return "none"
    if isinstance(x, float):
        return f"{x:g}" if math.isfinite(x) else _NA
    if isinstance(x, (list, tuple)):
        return ", ".join(_fmt(v) for v in x) or "none"
    if isinstance(x, Mapping):
        return _kv(x)
    return str(x)


def _kv(d: Mapping[str, Any], empty: str = "") -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in d.items()) or empty


def _dec(x: Any, digits: int = 3, kind: str = "f") -> str:
    return f"{float(x):.{digits}{kind}}" if _finite(x) else _NA


def _psnr(x: Any) -> str:
    return f"{float(x):.2f} dB" if _finite(x) else _NA


def _lpips(x: Any, *, failed: bool = False) -> str:
    if _finite(x):
        return _dec(x)
    return _e(LPIPS_UNAVAILABLE) if x is None and not failed else _NA


def _int(x: Any) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return _e(x)
    return _dec(x, 0) if _finite(x) else _NA


def _pct(x: Any) -> str:
    return f"{100 * float(x):.0f}%" if _finite(x) else _NA


def _seconds(x: Any) -> str:
    if not _finite(x):
        return _NA
    return f"{x:.3g} s" if x < 10 else f"{x:.1f} s"


def _error_line(err: Any) -> str:
    if isinstance(err, Mapping):
        kind, msg = err.get("type"), err.get("message")
        return f"{kind}: {msg}" if kind and msg else str(msg or kind or _json(err))
    return str(err)


def _json(x: Any) -> str:
    try:
        return json.dumps(to_jsonable(x), indent=2, ensure_ascii=False)
    except Exception:  # presentation only: fall back to repr for odd values
        return repr(x)


def _map(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _seq(x: Any) -> list[Any]:
    if x is None or isinstance(x, (str, bytes, Mapping)):
        return []
    if hasattr(x, "tolist"):
        x = x.tolist()
    try:
        return list(x)
    except TypeError:
        return []


def _at(xs: list[Any], i: int) -> Any:
    return xs[i] if i < len(xs) else None


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
