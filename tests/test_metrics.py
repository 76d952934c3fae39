"""gradleak.metrics: PSNR/SSIM against references, pairing, label accuracy, LPIPS loading."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from gradleak.errors import InputError, UnsafeFileError
from gradleak.metrics import LPIPS, PSNR_CAP, ImageScores, label_accuracy, mse, pair_images, psnr, score_images, ssim


def _real(grey: bool) -> torch.Tensor:
    """Two real 48×48 crops in [0, 1], [2, C, 48, 48]."""
    img = skimage.data.camera() if grey else skimage.data.astronaut()
    x = torch.from_numpy(np.asarray(img, np.float64) / 255.0)
    x = x[None] if grey else x.permute(2, 0, 1)
    return torch.stack([x[:, 100:196:2, 150:246:2], x[:, 260:356:2, 200:296:2]])


@pytest.mark.parametrize("grey", [True, False])
def test_ssim_matches_skimage(grey):
    orig = _real(grey)
    g = torch.Generator().manual_seed(0)
    noisy = (orig + 0.1 * torch.randn(orig.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(orig, 3, stride=1, padding=1, count_include_pad=False)
    for other in (noisy, blurred, orig.flip(0)):
        ours = ssim(other.float(), orig.float())
        for i in range(len(orig)):
            ref = structural_similarity(
                other[i].numpy(),
                orig[i].numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=0,
            )
            assert float(ours[i]) == pytest.approx(ref, abs=1e-4)
    assert torch.allclose(ssim(orig, orig), torch.ones(2, dtype=torch.float64))


def test_ssim_small_images_use_a_smaller_window():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 8, 8, generator=g)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert (ssim(a, a.flip(0)) < 0.9).all()
    with pytest.raises(InputError, match="3×3"):
        ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_psnr_and_mse_known_values():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)
    b[1] = 0.01
    assert mse(a, b).tolist() == pytest.approx([0.01, 0.0001])
    assert psnr(a, b).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(a * 255, b * 255, data_range=255).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(b, b).tolist() == [PSNR_CAP, PSNR_CAP]  # identical: capped, not inf
    with pytest.raises(InputError):
        psnr(a, b[:1])


def test_pairing_recovers_shuffle():
    orig = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    perm = [3, 0, 5, 1, 4, 2]
    recon = orig[perm] + 0.01
    order = pair_images(recon, orig)
    assert torch.equal(recon[order] - 0.01, orig) or torch.allclose(recon[order], orig + 0.01)
    assert [perm[j] for j in order] == list(range(6))
    # more reconstructions than originals: the decoys stay unmatched
    decoys = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    order = pair_images(torch.cat([decoys, orig.flip(0)]), orig)
    assert order == [3 + 5 - i for i in range(6)]
    with pytest.raises(InputError, match="at least as many"):
        pair_images(orig[:2], orig)


def test_part_of_a_batch_is_scored_against_its_own_originals():
    orig = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = score_images(torch.stack([orig[3], orig[1] + 0.05]), orig)  # an attack that recovers two of five
    assert scores.originals == [3, 1] and scores.order == [0, 1]
    shifted = float(psnr((orig[1:2] + 0.05).clamp(0, 1), orig[1:2]))
    assert scores.psnr[0] == PSNR_CAP and scores.psnr[1] == pytest.approx(shifted) and shifted < 40
    assert ImageScores(**{k: v for k, v in scores.to_json().items() if not k.startswith("mean")}) == scores


def test_score_images_and_json():
    orig = _real(grey=False).float()
    recon = torch.cat([orig.flip(0), torch.rand(1, 3, 48, 48)])
    scores = score_images(recon, orig)
    assert scores.order == [1, 0]
    assert scores.psnr == [PSNR_CAP, PSNR_CAP] and scores.ssim == pytest.approx([1.0, 1.0])
    assert scores.lpips is None and scores.mean_lpips is None and scores.mean_psnr == PSNR_CAP
    payload = json.loads(json.dumps(scores.to_json(), allow_nan=False))
    assert payload["mean_ssim"] == pytest.approx(1.0) and payload["lpips"] is None
    assert ImageScores([0], [10.0], [0.5], [0.2]).mean_lpips == pytest.approx(0.2)
    with pytest.raises(InputError, match="NaN"):
        score_images(torch.full_like(orig, float("nan")), orig)


def test_label_accuracy_multiset():
    assert label_accuracy([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)
    assert label_accuracy([3, 3, 3, 3], [3, 3, 3, 3]) == 1.0
    assert label_accuracy([0, 1], [2, 3]) == 0.0
    assert label_accuracy([5, 5], [5, 5, 5, 5]) == 1.0
    assert label_accuracy([4, 2, 2], [2, 4, 2]) == 1.0  # order does not matter
    with pytest.raises(InputError):
        label_accuracy([], [1])


# ------------------------------------------------------------------------------------------ LPIPS
_CONVS = {  # lpips package names: slice, index in AlexNet features, shape
    (1, 0): (64, 3, 11, 11),
    (2, 3): (192, 64, 5, 5),
    (3, 6): (384, 192, 3, 3),
    (4, 8): (256, 384, 3, 3),
    (5, 10): (256, 256, 3, 3),
}


def _lpips_state(torchvision_names: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, ((sl, idx), shape) in enumerate(_CONVS.items()):
        prefix = f"features.{idx}" if torchvision_names else f"net.slice{sl}.{idx}"
        state[f"{prefix}.weight"] = torch.randn(shape, generator=g) * 0.05
        state[f"{prefix}.bias"] = torch.randn(shape[0], generator=g) * 0.01
        state[f"lin{k}.model.1.weight"] = torch.rand(1, shape[0], 1, 1, generator=g)
    state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    return state


def test_lpips_from_file(tmp_path):
    path = tmp_path / "lpips_alex.safetensors"
    save_file(_lpips_state(), str(path))
    lpips = LPIPS.from_file(path)
    orig = _real(grey=False).float()
    noisy = (orig + 0.2 * torch.randn(orig.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert torch.allclose(lpips(orig, orig), torch.zeros(2), atol=1e-7)
    d = lpips(noisy, orig)
    assert d.shape == (2,) and bool((d > 0).all())
    grey = _real(grey=True).float()
    assert lpips(grey, grey.flip(0)).shape == (2,)
    scores = score_images(noisy, orig, lpips=lpips)
    assert scores.lpips == pytest.approx(d.tolist(), rel=1e-5)
    with pytest.raises(InputError, match="31"):
        lpips(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_lpips_torchvision_names(tmp_path):
    path = tmp_path / "tv.safetensors"
    save_file(_lpips_state(torchvision_names=True), str(path))
    assert LPIPS.from_file(path)(torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)).item() > 0


def test_lpips_refuses_bad_files(tmp_path):
    state = _lpips_state()
    del state["lin3.model.1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match="lin3.model.1.weight"):
        LPIPS.from_file(path)
    state = _lpips_state()
    state["net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    save_file(state, str(path))
    with pytest.raises(InputError, match="shape"):
        LPIPS.from_file(path)
    pth = tmp_path / "alex.pth"
    torch.save(_lpips_state(), pth)
    with pytest.raises(UnsafeFileError):
        LPIPS.from_file(pth)
    disguised = tmp_path / "alex.safetensors"
    disguised.write_bytes(pickle.dumps({"x": 1}, protocol=2))
    with pytest.raises(UnsafeFileError):
        LPIPS.from_file(disguised)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"{not safetensors")
    with pytest.raises(InputError):
        LPIPS.from_file(garbage)
    with pytest.raises(InputError, match="does not exist"):
        LPIPS.from_file(tmp_path / "missing.safetensors")


def test_grey_baseline_is_what_a_constant_image_at_the_batch_mean_scores():
    gen = torch.Generator().manual_seed(0)
    flat = 0.5 + 0.02 * torch.rand(2, 3, 16, 16, generator=gen)  # low contrast: a grey frame scores high
    busy = torch.rand(2, 3, 16, 16, generator=gen)
    for orig in (flat, busy):
        scores = score_images(torch.rand(2, 3, 16, 16, generator=gen), orig)
        want = psnr(torch.full_like(orig, float(orig.mean())), orig)
        assert scores.grey_psnr == pytest.approx(want.tolist())
    assert score_images(busy, flat).mean_grey_psnr > 30 > score_images(flat, busy).mean_grey_psnr
    part = score_images(busy[1:], busy)  # fewer reconstructions: the originals they are scored on, the batch's mean
    assert part.originals == [1] and part.grey_psnr == pytest.approx(
        [float(psnr(torch.full_like(busy[1:], float(busy.mean())), busy[1:]))]
    )
