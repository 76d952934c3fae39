"""Small self-contained HTML pages for summaries that are not one audit (the sweep, the FL demo).

Like :mod:`gradleak.report.html`, images are embedded as data URIs and nothing is computed here.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

from .files import write_bytes_atomic

__all__ = ["write_page"]

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-size:13px}"
    "code{background:#f5f5f5;padding:0 3px}"
)


def _tables(md: str) -> str:
    """Markdown pipe tables separated by blank lines, as HTML."""
    return "".join(_table(block) for block in md.strip().split("\n\n"))


def _table(md: str) -> str:
    """A Markdown pipe table (header, rule, rows) as HTML; backticks become <code>."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return ""

    def cells(ln: str) -> list[str]:
        out = []
        for c in ln.strip("|").split("|"):
            c = escape(c.strip())
            while c.count("`") >= 2:
                c = c.replace("`", "<code>", 1).replace("`", "</code>", 1)
            out.append(c)
        return out

    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(ln)) + "</tr>" for ln in lines[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, caption: str) -> str:
    if not path.exists():
        return f"<p><em>missing image {escape(path.name)}</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def write_page(
    path: str | os.PathLike[str],
    title: str,
    *,
    paragraphs: Sequence[str] = (),
    images: Sequence[tuple[Path, str]] = (),
    table_md: str = "",
    sections: Sequence[str] = (),
) -> None:
    """Write one HTML page: title, paragraphs (plain text), images, Markdown tables (separated by a blank line),
    raw HTML sections."""
    parts = [f"<h1>{escape(title)}</h1>"]
    for p in paragraphs:
        text = escape(p)
        while text.count("`") >= 2:
            text = text.replace("`", "<code>", 1).replace("`", "</code>", 1)
        parts.append(f"<p>{text}</p>")
    parts += [_img(Path(f), c) for f, c in images]
    if table_md:
        parts.append(_tables(table_md))
    parts += list(sections)
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    write_bytes_atomic(path, html.encode("utf-8"))
