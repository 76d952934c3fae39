"""Writing results: ``results.json``, PNG grids and a self-contained HTML report.

This package only writes what other modules computed; it never scores or attacks.
"""
from __future__ import annotations

from .files import write_bytes_atomic, write_json_atomic
from .html import write_html_report
from .images import image_grid, save_grid, save_images

__all__ = [
    "image_grid",
    "save_grid",
    "save_images",
    "write_bytes_atomic",
    "write_html_report",
    "write_json_atomic",
]
