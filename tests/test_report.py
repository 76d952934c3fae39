"""Tests for gradleak.report: atomic files, PNG grids and the HTML page."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.errors import InputError
from gradleak.report import (
    image_grid,
    save_grid,
    save_images,
    write_bytes_atomic,
    write_html_report,
    write_json_atomic,
)


def _images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _full_results() -> dict:
    return {
        "schema": 1, "gradleak_version": "0.1.0", "created": "2026-11-25T12:00:00Z",
        "config": {"model": "convnet", "dataset": "photos", "batch_size": 2, "protocol": "fedsgd"},
        "scenario": {
            "model": "convnet", "dataset": "photos", "image_shape": [3, 32, 32], "num_classes": 10,
            "batch_size": 2, "protocol": {"name": "fedsgd"},
            "attacker_assumes": {"batch_size": 2, "local_steps": 1},
            "defenses": [{"name": "clip", "max_norm": 4.0}],
            "augmentation": {"label_smoothing": 0.0, "mixup": None}, "seed": 0,
            "class_names": ["astronaut", "camera", "coffee", "cat", "rocket"],
        },
        "labels": {
            "true": [3, 1],
            "methods": {
                "idlg": {"recovered": [3, 4], "label_accuracy": 0.5, "seconds": 0.001,
                         "soft": [[0.1, 0.0, 0.0, 0.9, 0.0], [0.0, 0.2, 0.0, 0.0, 0.8]],
                         "error": None},
                "llg": {"recovered": [], "label_accuracy": None, "seconds": 0.002, "soft": None,
                        "error": "needs a bias gradient <head>"},
            },
            "used_by_attacks": "idlg",
        },
        "attacks": [
            {"name": "inverting_gradients", "iterations": 1000, "restarts": 1, "seconds": 120.5,
             "final_loss": 0.01, "loss_curve": [[0, 0.9], [10, 0.5], [20, float("nan")], [30, 0.1]],
             "psnr": [19.2, 17.0], "ssim": [0.6, 0.5], "lpips": None,
             "mean_psnr": 18.1, "mean_ssim": 0.55, "mean_lpips": None,
             "images": {"grid": "inverting_gradients.png", "stages": {"stage 0": "missing.png"}},
             "config": {"lr": 0.1}, "error": None},
            {"name": "dlg", "iterations": 0, "seconds": 0.5, "error": "RuntimeError: diverged"},
        ],
        "verdict": {"level": "high", "summary": "Images and labels are recoverable <easily>."},
    }


# --- files ------------------------------------------------------------------------------------

def test_json_nan_and_inf_become_null(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": float("nan"), "b": [float("inf"), -math.inf, 1.5],
                             "t": torch.tensor([1.0, float("nan")]), "n": np.float32(2.5),
                             "i": np.int64(3), "s": torch.tensor(4), "arr": np.arange(2)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "t": [1.0, None], "n": 2.5,
                                "i": 3, "s": 4, "arr": [0, 1]}


def test_json_failure_leaves_old_file_intact(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"\$\.bad"):
        write_json_atomic(path, {"ok": 2, "bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_bytes_failure_midway_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    write_bytes_atomic(path, b"old")

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr("gradleak.report.files.os.replace", boom)
    with pytest.raises(OSError):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]


def test_write_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "r.json"
    write_json_atomic(path, [1])
    assert json.loads(path.read_text()) == [1]


# --- images -----------------------------------------------------------------------------------

def test_grid_size_and_top_left_pixel():
    originals, recon = _images(2), _images(2, seed=1)
    grid = image_grid([originals, recon], pad=2)
    # 32 px → ×4 by default; 2 columns and 2 rows with a 2 px gap between cells, no outer border
    assert grid.size == (2 * 128 + 2, 2 * 128 + 2)
    assert grid.mode == "RGB"
    expected = tuple(int(v) for v in (originals[0, :, 0, 0] * 255).round())
    assert grid.getpixel((0, 0)) == expected
    # the second row starts below the gap with the first reconstruction
    expected_r = tuple(int(v) for v in (recon[0, :, 0, 0] * 255).round())
    assert grid.getpixel((0, 130)) == expected_r


def test_grid_explicit_scale_grey_and_wrap():
    grey = _images(5, c=1, size=8)
    grid = image_grid([grey], pad=1, scale=2)
    assert grid.mode == "L" and grid.size == (5 * 16 + 4, 16)
    wrapped = image_grid([grey, grey], pad=1, scale=2, max_cols=3)
    # two groups of (originals, reconstructions); 4 px gap between groups
    assert wrapped.size == (3 * 16 + 2, 4 * 16 + 2 * 1 + 4)


def test_grid_rejects_bad_shapes():
    with pytest.raises(InputError):
        image_grid([torch.rand(1, 2, 8, 8)])
    with pytest.raises(InputError):
        image_grid([torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)])


def test_save_grid_and_images(tmp_path):
    originals = _images(2)
    path = save_grid(tmp_path / "g.png", originals, [_images(2, seed=1), _images(2, seed=2)])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (258, 3 * 128 + 4)
    paths = save_images(tmp_path / "imgs", originals, "orig")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["orig_000.png", "orig_001.png"]
    with Image.open(paths[1]) as img:
        assert img.size == (32, 32)
        assert np.array_equal(np.asarray(img),
                              (originals[1] * 255).round().byte().permute(1, 2, 0).numpy())


# --- html -------------------------------------------------------------------------------------

def test_html_report_full(tmp_path):
    save_grid(tmp_path / "inverting_gradients.png", _images(2), _images(2, seed=1))
    write_html_report(tmp_path / "report.html", _full_results(), tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "HIGH" in page and "level-high" in page
    assert "Images and labels are recoverable &lt;easily&gt;." in page  # escaped
    assert "inverting_gradients" in page and ">dlg<" in page
    assert ">3<" in page and ">4<" in page and "50%" in page  # labels and accuracy
    assert "idlg" in page and "3 cat: 0.90" in page  # soft labels, top entry
    assert "unavailable (no weights given)" in page
    assert page.count('<img class="pixels"') == 1  # the grid; the stage image is missing
    assert "Image not available: missing.png" in page
    assert page.count("data:image/png;base64,") == 2  # grid + loss curve
    assert "<h2>Errors</h2>" in page and "RuntimeError: diverged" in page
    assert "needs a bias gradient &lt;head&gt;" in page
    without_data = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_data
    assert "<script" not in page and "<link" not in page


def test_html_report_minimal(tmp_path):
    write_html_report(tmp_path / "report.html", {"schema": 1}, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No verdict was recorded" in page
    assert "No attacks were run" in page and "No label recovery was run" in page
    assert "Errors" not in page and "http" not in page


def test_html_report_empty_sections_and_defaults(tmp_path):
    results = {"verdict": {"level": "low", "summary": "ok"}, "labels": {"true": [1]},
               "attacks": [{"name": "x", "loss_curve": [[0, 0.0]], "images": {}}]}
    write_html_report(tmp_path / "sub" / "report.html", results)  # out_dir defaults to the parent
    page = (tmp_path / "sub" / "report.html").read_text(encoding="utf-8")
    assert "level-low" in page and "data:image" not in page
