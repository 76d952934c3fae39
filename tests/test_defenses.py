import pytest
import torch

from gradleak.defenses import Clip, GaussianNoise, LabelSmoothing, Mixup, Quantize, Sparsify, parse_defense
from gradleak.errors import InputError, UnknownNameError
from gradleak.observation import update_norm


def _upd():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(10, 10, generator=g), "b": torch.randn(10, generator=g)}


def test_clip_bounds_the_global_norm(gen):
    out = Clip(1.0)(_upd(), generator=gen)
    assert update_norm(out) == pytest.approx(1.0, rel=1e-5)
    small = {"a": torch.full((2,), 0.1)}
    assert torch.equal(Clip(10.0)(small, generator=gen)["a"], small["a"])


def test_noise_is_reproducible_and_scaled():
    u = {"a": torch.zeros(100_000)}
    a = GaussianNoise(0.5)(u, generator=torch.Generator().manual_seed(1))["a"]
    b = GaussianNoise(0.5)(u, generator=torch.Generator().manual_seed(1))["a"]
    assert torch.equal(a, b) and a.std().item() == pytest.approx(0.5, rel=0.02)


def test_sparsify_keeps_largest_entries(gen):
    u = _upd()
    out = Sparsify(0.9)(u, generator=gen)
    assert int((out["a"] != 0).sum()) == 10
    kept = out["a"][out["a"] != 0].abs().min()
    assert kept >= u["a"].abs().flatten().sort().values[-10]


def test_quantize_levels(gen):
    out = Quantize(2)(_upd(), generator=gen)
    assert out["a"].unique().numel() <= 4


def test_parse_defense_specs():
    assert parse_defense("clip:4") == Clip(4.0)
    assert parse_defense("noise:sigma=0.01") == GaussianNoise(0.01)
    assert parse_defense("quantize:8") == Quantize(8)
    with pytest.raises(UnknownNameError):
        parse_defense("blur:3")
    with pytest.raises(InputError):
        parse_defense("clip")
    with pytest.raises(InputError):
        parse_defense("clip:-1")
    with pytest.raises(InputError):
        parse_defense("sparsify:1.5")
    with pytest.raises(InputError):
        parse_defense("clip:bound=3")


def test_label_augmentations(gen):
    y = torch.tensor([2, 0])
    t = LabelSmoothing(0.1).targets(y, 4)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert t[0, 2] == pytest.approx(0.9 + 0.025)
    xa, xb = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    x, soft, lam = Mixup(1.0).mix(xa, y, xb, torch.tensor([1, 3]), 4, generator=gen)
    torch.testing.assert_close(x[:, 0, 0, 0], 1 - lam)
    torch.testing.assert_close(soft[0, 2], lam[0])
