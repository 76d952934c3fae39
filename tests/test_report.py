"""Tests for gradleak.report: atomic files, PNG grids and the HTML page."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.attacks import AttackResult
from gradleak.cost import CostEstimate, Phase
from gradleak.errors import InputError
from gradleak.labels import LabelResult
from gradleak.metrics import ImageScores
from gradleak.report import (
    AuditImages,
    image_grid,
    render_html,
    save_grid,
    save_images,
    write_audit,
    write_bytes_atomic,
    write_json_atomic,
)
from gradleak.results import AttackRun, AuditResult, LabelRun, LabelSection, verdict

SCHEMA1_FILE = Path(__file__).parent / "data" / "results_schema1.json"


def _images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _pixel(img: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in (img[:, 0, 0] * 255).round())


def _result(curve_nan: bool = True) -> AuditResult:
    """Two labelled samples; one attack scored with a stage and an estimate, one scored with LPIPS,
    one refused (its error holds markup) and one crashed."""
    soft = torch.tensor([[0.1, 0.0, 0.0, 0.9, 0.0], [0.0, 0.2, 0.0, 0.0, 0.8]])
    labels = LabelSection(
        runs=(
            LabelRun(
                requested="auto",
                method="idlg",
                result=LabelResult("idlg", [3, 4], soft=soft, seconds=0.001),
                accuracy=0.5,
            ),
            LabelRun(requested="llg", method="llg", error="needs a bias gradient <head>"),
        ),
        true=(3, 1),
    )
    ig = AttackRun(
        name="inverting_gradients",
        seed=0,
        result=AttackResult(
            name="inverting_gradients",
            images=_images(2, seed=1),
            iterations=1000,
            seconds=120.5,
            final_loss=0.01,
            loss_curve=[(0, 0.9), (10, 0.5), (20, float("nan") if curve_nan else 0.3), (30, 0.1)],
            stages={"stage 0": _images(2, seed=2), "mean": _images(1, seed=3)},
            config={"lr": 0.1},
        ),
        scores=ImageScores(order=[1, 0], psnr=[19.5, 17.0], ssim=[0.6, 0.5]),
        estimate=CostEstimate("inverting_gradients", (Phase(1000, 1, 0.1),), peak_rss_mb=300.0),
    )
    dlg = AttackRun(
        name="dlg",
        seed=1,
        result=AttackResult(
            name="dlg",
            images=_images(2, seed=4),
            iterations=50,
            seconds=2.0,
            final_loss=0.5,
            loss_curve=[(0, 1.0), (49, 0.5)],
        ),
        scores=ImageScores(order=[0, 1], psnr=[12.0, 13.0], ssim=[0.2, 0.3], lpips=[0.25, 0.5]),
    )
    refused = AttackRun(name="ggl", seed=2, error="needs <script>alert(1)</script>")
    crashed = AttackRun(
        name="gradinversion",
        seed=3,
        error="RuntimeError: diverged",
        traceback="Traceback (most recent call last):\n  line <1>",
    )
    attacks = (ig, dlg, refused, crashed)
    setting = {
        "model": "convnet",
        "dataset": "photos",
        "image_shape": [3, 32, 32],
        "num_classes": 5,
        "batch_size": 2,
        "protocol": {"name": "fedavg", "local_steps": 2},
        "attacker_assumes": {"protocol": {"name": "fedsgd"}, "batch_size": 2, "bn": "eval"},
        "defenses": [{"name": "clip", "max_norm": 4.0}],
        "augmentation": {"label_smoothing": 0.0, "mixup": None},
        "seed": 0,
    }
    return AuditResult(
        labels=labels,
        attacks=attacks,
        verdict=verdict(labels, attacks),
        setting=setting,
        config={"model": "convnet", "attacks": ["inverting_gradients", "dlg", "ggl", "gradinversion"]},
        class_names=("astronaut", "camera", "coffee", "cat", "rocket"),
        version="0.2.0",
        created="2026-11-25T12:00:00+00:00",
    )


# --- files ------------------------------------------------------------------------------------


def test_json_nan_and_inf_become_null(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(
        path,
        {
            "a": float("nan"),
            "b": [float("inf"), -math.inf, 1.5],
            "t": torch.tensor([1.0, float("nan")]),
            "n": np.float32(2.5),
            "i": np.int64(3),
            "s": torch.tensor(4),
            "arr": np.arange(2),
        },
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "a": None,
        "b": [None, None, 1.5],
        "t": [1.0, None],
        "n": 2.5,
        "i": 3,
        "s": 4,
        "arr": [0, 1],
    }


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
        assert np.array_equal(np.asarray(img), (originals[1] * 255).round().byte().permute(1, 2, 0).numpy())


# --- audit folder and html -----------------------------------------------------------------


def test_write_audit_writes_grids_json_and_page(tmp_path):
    result, truth = _result(), _images(2)
    paths = write_audit(result, tmp_path / "out", truth_images=truth)
    assert set(paths) == {"json", "html", "inverting_gradients", "dlg"}
    ig = result.attack("inverting_gradients")
    with Image.open(paths["inverting_gradients"]) as grid:  # truth on top, reconstructions paired below
        assert grid.size == (258, 258)
        assert grid.getpixel((0, 0)) == _pixel(truth[0])
        assert grid.getpixel((0, 130)) == _pixel(ig.result.images[1])
    with Image.open(tmp_path / "out" / "inverting_gradients_stage_0.png") as stage:  # same length: paired too
        assert stage.getpixel((0, 130)) == _pixel(ig.result.stages["stage 0"][1])
    with Image.open(tmp_path / "out" / "inverting_gradients_mean.png") as stage:  # another length: as is
        assert stage.size == (258, 258) and stage.getpixel((0, 130)) == _pixel(ig.result.stages["mean"][0])

    data = json.loads(paths["json"].read_text())
    assert data["schema"] == 1
    assert [a.get("images") for a in data["attacks"]] == [
        {
            "grid": "inverting_gradients.png",
            "stages": {"stage 0": "inverting_gradients_stage_0.png", "mean": "inverting_gradients_mean.png"},
        },
        {"grid": "dlg.png"},
        None,
        None,
    ]
    assert data["attacks"][0]["estimated_seconds"] == pytest.approx(100.0)

    page = paths["html"].read_text(encoding="utf-8")
    assert "MEDIUM" in page and "level-medium" in page
    assert "18.25 dB" in page and "12.50 dB" in page and "19.50 dB" in page  # mean and per-image PSNR
    assert "0.375" in page and "unavailable (no weights given)" in page  # LPIPS: dlg scored, IG without weights
    assert "needs &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "line &lt;1&gt;" in page and "<h2>Errors</h2>" in page  # the crash's traceback
    assert "needs a bias gradient &lt;head&gt;" in page
    assert ">3<" in page and ">4<" in page and "50%" in page and "3 cat: 0.90" in page  # labels, soft labels
    assert 'idlg <span class="muted">(auto)</span>' in page
    assert "3×32×32, 5 classes" in page and "clip(max_norm=4)" in page and "protocol=fedsgd, batch_size=2" in page
    assert "100.0 s" in page  # the estimate
    assert page.count('<img class="pixels"') == 4  # two grids, two stages
    assert page.count("data:image/png;base64,") == 6  # and two loss curves
    assert "Image not available" not in page
    without_data = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_data and "<link" not in page


def test_write_audit_without_truth_shows_only_reconstructions(tmp_path):
    run = AttackRun(
        name="dlg",
        seed=0,
        result=AttackResult(name="dlg", images=_images(3), iterations=1, seconds=0.1, final_loss=0.1),
    )
    result = AuditResult(labels=LabelSection(), attacks=(run,), verdict=verdict(LabelSection(), (run,)))
    paths = write_audit(result, tmp_path, truth_images=None)
    with Image.open(paths["dlg"]) as grid:
        assert grid.size == (3 * 128 + 4, 128) and grid.getpixel((0, 0)) == _pixel(run.result.images[0])
    page = paths["html"].read_text(encoding="utf-8")
    assert "no ground truth to compare with" in page and "LOW" in page


def test_html_missing_image_is_a_note(tmp_path):
    images = AuditImages(
        grids={"inverting_gradients": tmp_path / "missing.png"},
        stages={"inverting_gradients": {"stage 0": tmp_path / "stage.png"}},
    )
    (tmp_path / "stage.png").write_bytes(b"not an image")
    page = render_html(_result(), images)
    assert "Image not available: missing.png" in page and "Image not available: stage.png" in page
    assert '<img class="pixels"' not in page


def test_html_minimal_result():
    empty = LabelSection()
    page = render_html(AuditResult(labels=empty, attacks=(), verdict=verdict(empty, ())), AuditImages())
    assert "LOW" in page and "nothing scored" in page
    assert "No attacks were run" in page and "No label recovery was run" in page
    assert "Errors" not in page and "Scenario" not in page and "http" not in page


# --- results.json -----------------------------------------------------------------------------


def test_results_round_trip_through_json():
    data = json.loads(json.dumps(_result(curve_nan=False).to_json()))
    assert AuditResult.from_json(data).to_json() == data


def test_reads_a_gradleak_0_1_results_file(tmp_path):
    data = json.loads(SCHEMA1_FILE.read_text())
    result = AuditResult.from_json(data)
    assert [a.name for a in result.attacks] == ["inverting_gradients"]
    assert result.attack("inverting_gradients").mean_psnr == pytest.approx(19.7906, abs=1e-3)
    assert result.labels.chosen is not None and result.labels.chosen.method == "idlg"
    assert result.labels.true == (4,) and result.verdict.level == "medium" and result.version == "0.1.0"
    paths = write_audit(result, tmp_path, truth_images=None)  # read back: no reconstructions, so no grids
    assert set(paths) == {"json", "html"}
    assert "19.79 dB" in paths["html"].read_text(encoding="utf-8")


def test_results_of_another_schema_are_refused():
    data = json.loads(SCHEMA1_FILE.read_text())
    with pytest.raises(InputError, match="schema 2"):
        AuditResult.from_json({**data, "schema": 2})


def test_a_reconstruction_no_better_than_a_grey_image_is_not_a_leak():
    def run(grey: float) -> AttackRun:
        return AttackRun(name="ig", seed=0, scores=ImageScores([0, 1], [16.0, 17.0], [0.3, 0.4], grey_psnr=[grey] * 2))

    flat = verdict(LabelSection(), (run(16.8),))  # 16.5 dB clears the 15 dB line but a grey frame scores 16.8
    assert flat.level == "low" and "16.5 dB PSNR (a grey image scores 16.8 dB)" in flat.summary
    busy = verdict(LabelSection(), (run(11.0),))
    assert busy.level == "medium" and "partly recoverable" in busy.summary
    restored = AttackRun.from_json(run(16.8).to_json())
    assert restored.scores is not None and restored.scores.grey_psnr == [16.8, 16.8]
