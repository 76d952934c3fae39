"""DP-SGD (Opacus), Soteria and gradient compression, each against a slow reference, and the client's
round (:func:`gradleak.client.client_round`) that runs them."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from gradleak.client import client_round
from gradleak.defenses import DEFENSES, DPSGD, Compress, Soteria, dp_epsilon, head_input_and_sensitivity, parse_defense
from gradleak.errors import InputError
from gradleak.models import build_model
from gradleak.protocols import FedAvg, FedSGD, client_update
from gradleak.scenario import Scenario, simulate

HAS_OPACUS = importlib.util.find_spec("opacus") is not None
needs_opacus = pytest.mark.skipif(not HAS_OPACUS, reason="DP-SGD needs the dp extra: pip install 'gradleak[dp]'")


def _case(batch=4, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", 5, (1, 6, 6), width=16)
    x = torch.randn(batch, 1, 6, 6)
    y = torch.arange(batch) % 5
    return model, x, y


def _per_example_grads(model, x, y):
    out = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    return out


def test_specs_parse_with_defaults():
    assert parse_defense("soteria:0.8") == Soteria(0.8)
    assert parse_defense("compress:ratio=0.9,bits=4") == Compress(0.9, 4)
    assert parse_defense("compress:0.99").bits == 0
    for bad in ("soteria:1.0", "compress:ratio=0.5,bits=40"):
        with pytest.raises(InputError):
            parse_defense(bad)


@needs_opacus  # a dpsgd spec refuses to build without Opacus (tested in test_cli_bad_input.py)
def test_dpsgd_specs_parse_with_defaults():
    assert parse_defense("dpsgd:noise=1.0,clip=2") == DPSGD(noise=1.0, clip=2.0)
    assert parse_defense("dpsgd:0.5") == DPSGD(noise=0.5)
    for bad in ("dpsgd:clip=1", "dpsgd:noise=-1", "dpsgd:delta=2,noise=1"):
        with pytest.raises(InputError):
            parse_defense(bad)


@needs_opacus
@pytest.mark.parametrize("protocol", [FedSGD(), FedAvg(3, 0.1, 2)], ids=["fedsgd", "fedavg"])
def test_dpsgd_without_noise_or_clipping_is_the_honest_update(protocol, gen):
    model, x, y = _case()
    update, records = client_round(model, protocol, x, y, [DPSGD(noise=0.0, clip=1e9)], generator=gen)
    ref = client_update(model, protocol, x, y)
    for k in ref:
        torch.testing.assert_close(update[k], ref[k], atol=1e-6, rtol=1e-5)
    assert records[0]["epsilon"] is None and records[0]["steps"] == protocol_steps(protocol)


def protocol_steps(protocol):
    return 1 if isinstance(protocol, FedSGD) else protocol.local_steps


@needs_opacus
def test_dpsgd_clips_each_example_like_the_slow_reference(gen):
    model, x, y = _case()
    clip = 0.05
    update, _ = client_round(model, FedSGD(), x, y, [DPSGD(noise=0.0, clip=clip)], generator=gen)
    per = _per_example_grads(model, x, y)
    expected = {k: torch.zeros_like(v) for k, v in per[0].items()}
    for g in per:
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
        for k in g:
            expected[k] += g[k] * min(1.0, clip / (norm + 1e-6)) / len(per)
    for k in expected:
        torch.testing.assert_close(update[k], expected[k], atol=1e-6, rtol=1e-4)


@needs_opacus
def test_dpsgd_noise_is_seeded_scaled_and_accounted():
    model, x, y = _case(batch=2)
    d = DPSGD(noise=2.0, clip=1.0)
    a, rec = client_round(model, FedSGD(), x, y, [d], generator=torch.Generator().manual_seed(3))
    b, _ = client_round(model, FedSGD(), x, y, [d], generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    clean, _ = client_round(model, FedSGD(), x, y, [DPSGD(noise=0.0, clip=1.0)], generator=torch.Generator())
    resid = torch.cat([(a[k] - clean[k]).flatten() for k in a])
    assert resid.std().item() == pytest.approx(2.0 * 1.0 / 2, rel=0.1)  # σ·C / batch
    assert rec[0]["epsilon"] == pytest.approx(dp_epsilon(2.0, 1.0, 1, 1e-5))
    assert dp_epsilon(4.0, 1.0, 1, 1e-5) < rec[0]["epsilon"] < dp_epsilon(1.0, 1.0, 1, 1e-5)


@needs_opacus
def test_dpsgd_refuses_batchnorm_and_plain_application(gen):
    bn = build_model("convnet", 3, (3, 32, 32), width=4)
    with pytest.raises(InputError, match="BatchNorm"):
        client_round(bn, FedSGD(), torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), [DPSGD(noise=1.0)], generator=gen)
    with pytest.raises(InputError, match="client_round"):
        DPSGD(noise=1.0)({"w": torch.zeros(2)}, generator=gen)
    with pytest.raises(InputError, match="at most one"):
        model, x, y = _case()
        client_round(model, FedSGD(), x, y, [DPSGD(noise=1.0), DPSGD(noise=2.0)], generator=gen)


def test_soteria_sensitivity_matches_a_per_feature_loop():
    model, x, _ = _case(batch=2)
    r, sens = head_input_and_sensitivity(model, "head", x)
    xi = x.clone().requires_grad_(True)
    feats = model.body(xi)
    for f in range(0, feats.shape[1], 5):
        (g,) = torch.autograd.grad(feats[:, f].sum(), xi, retain_graph=True)
        torch.testing.assert_close(sens[:, f], g.flatten(1).norm(dim=1))
    torch.testing.assert_close(r, feats.detach())


def test_soteria_prunes_only_the_defended_layer(gen):
    model, x, y = _case()
    honest = client_update(model, FedSGD(), x, y)
    out, rec = client_round(model, FedSGD(), x, y, [Soteria(0.5)], generator=gen)
    assert rec == ({"name": "soteria", "ratio": 0.5},)
    for k in honest:
        if k != "head.weight":
            assert torch.equal(out[k], honest[k])
    _, keep = Soteria(0.5).mask(model, x)
    assert int((~keep).sum()) == 8
    assert torch.all(out["head.weight"][:, ~keep] == 0)
    assert torch.equal(out["head.weight"][:, keep], honest["head.weight"][:, keep])


def test_compress_is_global_topk_and_unbiased():
    g = torch.Generator().manual_seed(0)
    u = {"a": torch.randn(100, generator=g), "b": 10 * torch.randn(100, generator=g)}
    out = Compress(0.9)(u, generator=g)
    assert int((out["a"] != 0).sum() + (out["b"] != 0).sum()) == 20
    assert int((out["b"] != 0).sum()) > int((out["a"] != 0).sum())  # one threshold for all tensors
    draws = torch.stack([Compress(0.0, 2)(u, generator=g)["a"] for _ in range(2000)])
    assert draws[0].unique().numel() <= 7  # sign × 4 levels
    torch.testing.assert_close(draws.mean(0), u["a"], atol=0.06, rtol=0)  # stochastic rounding: unbiased


def test_every_registered_defense_runs_through_client_round(gen):
    model, x, y = _case()
    values = {
        "clip": "1",
        "noise": "0.01",
        "laplace": "0.01",
        "sparsify": "0.5",
        "quantize": "4",
        "dpsgd": "1",
        "soteria": "0.5",
        "compress": "0.5",
    }
    for name, cls in DEFENSES.items():
        if name in ("dpsgd", "dpfedavg") and not HAS_OPACUS:
            continue
        d = parse_defense(f"{name}:{values.get(name, '0.5')}")
        update, rec = client_round(model, FedSGD(), x, y, [d], generator=gen)
        assert set(update) == {k for k, _ in model.named_parameters()}
        assert rec[0]["name"] == name
        assert type(d) is cls
        assert all(torch.isfinite(v).all() for v in update.values())


@needs_opacus
def test_scenario_records_dpsgd_epsilon():
    obs, truth = simulate(
        Scenario(model="mlp", dataset="digits", batch_size=2, defenses=(parse_defense("dpsgd:noise=1,clip=1"),))
    )
    assert obs.defenses[0]["name"] == "dpsgd" and obs.defenses[0]["epsilon"] > 0
