"""Writing results: ``results.json``, PNG grids and a self-contained HTML report.

This package only writes what other modules computed; it never scores or attacks.
"""

from __future__ import annotations

from .audit import write_audit
from .files import write_bytes_atomic, write_json_atomic
from .html import AuditImages, render_html, write_html_report
from .images import image_grid, save_grid, save_images

__all__ = [
    "AuditImages",
    "image_grid",
    "render_html",
    "save_grid",
    "save_images",
    "write_audit",
    "write_bytes_atomic",
    "write_html_report",
    "write_json_atomic",
]
