"""Analytic attacks and the per-layer analysis (PAPERS.md §3): exact FC recovery, R-GAP / layer-wise
inversion of a small conv net, the tensor method of Wang, Lee & Lei, and `analyze`'s counts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradleak.analyze import analyze_model, copa_index
from gradleak.attacks import ATTACKS
from gradleak.attacks.analytic.fc import first_linear_layer
from gradleak.attacks.analytic.tensor import (
    QueryTruth,
    TensorConfig,
    has_flip_symmetry,
    match_cosines,
    reconstruct,
    score_query,
    single_query,
)
from gradleak.attacks.analytic.trace import symbolic_trace, trace_chain
from gradleak.errors import UnsupportedError
from gradleak.metrics import psnr, score_images
from gradleak.scenario import Scenario, simulate


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# -- exact FC recovery -------------------------------------------------------------------------------
def test_fc_single_sample_exact():
    obs, truth = simulate(Scenario(model="mlp", model_kwargs={"width": 64}, dataset="digits", seed=1))
    res = ATTACKS.get("analytic_fc")().run(obs, generator=gen())
    assert (res.images - truth.images).abs().max() < 1e-5
    assert res.assumptions["exact"] == [True]


def test_fc_batch_reports_exact_samples():
    obs, truth = simulate(Scenario(model="mlp", model_kwargs={"width": 256}, dataset="digits", batch_size=4, seed=0))
    res = ATTACKS.get("analytic_fc")().run(obs, generator=gen())
    s = score_images(res.images, truth.images)
    exact = res.assumptions["exact"]
    assert sum(exact) >= 2
    for j, flag in enumerate(exact):  # every sample flagged exact is exact
        if flag:
            i = s.order.index(j)
            assert (res.images[j] - truth.images[i]).abs().max() < 1e-5


def test_fc_refuses_without_relu_for_batches():
    obs, _ = simulate(Scenario(model="fcn3", model_kwargs={"bias": True}, dataset="digits", batch_size=2, seed=0))
    with pytest.raises(UnsupportedError, match="ReLU"):
        ATTACKS.get("analytic_fc")().check(obs)


def test_a_fedavg_delta_is_refused_before_the_model_is_looked_at():
    """Refusing a parameter delta costs no trace: a model fx cannot trace gets the delta's reason alone."""
    from dataclasses import replace

    from gradleak.protocols import FedAvg

    class Branching(nn.Module):  # a forward that branches on the data: symbolic tracing fails on it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) if x.sum() > 0 else self.fc(-x.flatten(1))

    obs, _ = simulate(Scenario(model="mlp", model_kwargs={"width": 8}, dataset="digits", seed=0))
    model = Branching()
    delta = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    fedavg = replace(obs, model=model, update=delta, protocol=FedAvg(local_steps=2, local_lr=0.1), head="fc")
    assert ATTACKS.get("analytic_fc")().problems(fedavg) == [
        "needs one gradient (FedSGD); this update is a fedavg parameter delta"
    ]
    assert ATTACKS.get("imprint")().problems(fedavg) == [
        "needs one gradient (FedSGD): local steps of fedavg move the block's thresholds"
    ]
    gradient = replace(fedavg, protocol=obs.protocol)  # the same model under FedSGD is traced, and refused for it
    assert "trace" in " ".join(ATTACKS.get("analytic_fc")().problems(gradient))


# -- layer-wise ----------------------------------------------------------------------------------------
def test_rgap_tiny_conv_net_exact():
    obs, truth = simulate(Scenario(model="cnn6", dataset="photos", image_size=8, seed=0))
    res = ATTACKS.get("rgap")().run(obs, generator=gen())
    assert float(psnr(res.images, truth.images)) > 40
    assert res.labels == truth.labels.tolist()
    assert not res.assumptions["deficient_layers"]


def test_layerwise_handles_biases_and_sigmoid():
    obs, truth = simulate(Scenario(model="lenet", dataset="digits", seed=2))
    res = ATTACKS.get("layerwise")().run(obs, generator=gen())
    assert float(psnr(res.images, truth.images)) > 40


def test_layerwise_lists_every_unmet_need():
    obs, _ = simulate(
        Scenario(model="convnet", model_kwargs={"width": 4}, dataset="digits", batch_size=2, bn_mode="train")
    )
    with pytest.raises(UnsupportedError) as e:
        ATTACKS.get("rgap")().check(obs)
    msg = str(e.value)
    for word in ("B=1", "ReLU", "pooling", "BatchNorm"):
        assert word in msg


def test_trace_chain_finds_residuals():
    from gradleak.models import build_model

    _, problems = trace_chain(build_model("resnet18", 10, (3, 16, 16)), (3, 16, 16))
    assert any("branch" in p for p in problems)


# -- tensor decomposition ----------------------------------------------------------------------------
def test_a_traced_graph_is_kept_only_while_the_modules_stay_the_same():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert symbolic_trace(model) is symbolic_trace(model)  # traced once for the attacks that inspect one model
    assert first_linear_layer(model)[0] == "1"
    graph = symbolic_trace(model)
    assert symbolic_trace(model.eval()) is not graph  # a forward may branch on the mode: traced again
    model[1] = nn.Conv2d(1, 3, 2)  # a replaced module is a new structure: traced again
    assert first_linear_layer(model)[2] == ["the first layer is Conv2d (1), not a fully connected nn.Linear"]


def test_tensor_recovers_small_batch():
    obs, truth = single_query(d=10, batch_size=3, width=20000, seed=0)
    rec = reconstruct(obs, TensorConfig(refine_steps=30))
    cos, _ = match_cosines(rec.x, truth.x)
    assert min(cos) > 0.99
    assert sorted(rec.labels) == sorted(truth.labels.tolist())


def test_tensor_same_result_at_one_and_two_threads():
    obs, _ = single_query(d=10, batch_size=3, width=3000, seed=1, num_classes=2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = reconstruct(obs, TensorConfig(max_noise=10.0))
        torch.set_num_threads(2)
        two = reconstruct(obs, TensorConfig(max_noise=10.0))
    finally:
        torch.set_num_threads(old)
    assert (one.x - two.x).abs().max() < 1e-6
    assert one.labels == two.labels


def test_tensor_recovers_the_scale_where_the_direction_is_right():
    obs, truth = single_query(d=10, batch_size=3, width=30000, seed=1, num_classes=2)
    rec = reconstruct(obs, TensorConfig())
    sc = score_query(rec.x, rec.labels, truth, has_flip_symmetry(obs))
    assert min(sc.cos) > 0.999
    assert max(sc.rel_error) < 0.05
    assert all(sc.labels_ok)


def test_tensor_score_is_modulo_the_two_class_flip_only_where_it_exists():
    x = torch.randn(3, 6, generator=gen(), dtype=torch.float64)
    truth = QueryTruth(x, torch.tensor([0, 1, 1]))
    flipped = score_query(-x[[2, 0, 1]], [0, 1, 0], truth, symmetric=True)  # (−x, 1 − y), permuted
    assert flipped.cos == pytest.approx([1.0] * 3) and flipped.labels_ok == [True] * 3
    assert max(flipped.rel_error) < 1e-12 and flipped.order == [1, 2, 0]
    signed = score_query(-x, [1, 0, 0], truth, symmetric=False)
    assert signed.cos == pytest.approx([-1.0] * 3) and signed.labels_ok == [False] * 3
    assert min(signed.rel_error) == pytest.approx(2.0)
    assert has_flip_symmetry(single_query(d=6, batch_size=2, width=200, num_classes=2)[0])
    assert not has_flip_symmetry(single_query(d=6, batch_size=2, width=200, num_classes=10)[0])
    assert not has_flip_symmetry(single_query(d=6, batch_size=2, width=200, num_classes=2, activation="relu")[0])


def test_tensor_polish_removes_the_estimate_noise():
    obs, truth = single_query(d=10, batch_size=3, width=3000, seed=1, num_classes=2)
    rec = reconstruct(obs, TensorConfig())
    sym = has_flip_symmetry(obs)
    assert max(score_query(rec.x_tensor, rec.labels, truth, sym).rel_error) > 0.1  # the paper's estimate
    assert max(score_query(rec.x, rec.labels, truth, sym).rel_error) < 1e-2
    assert rec.info["polish"]["converged"] and rec.info["gradient_distance"] < rec.info["gradient_distance_tensor"]
    off = reconstruct(obs, TensorConfig(polish_steps=0))
    assert torch.equal(off.x, off.x_tensor) and torch.allclose(off.x, rec.x_tensor)


def test_tensor_refuses_a_fit_far_above_the_noise():
    obs, _ = single_query(d=10, batch_size=3, width=3000, seed=1, num_classes=2)
    rec = reconstruct(obs, TensorConfig(polish_steps=0))
    ratio = rec.fit_residual / rec.noise  # 0.38: a decomposition that found the batch
    assert 0.1 < ratio < 1.0
    with pytest.raises(UnsupportedError, match="did not find B=3 components"):
        reconstruct(obs, TensorConfig(max_fit_ratio=0.9 * ratio, polish_steps=0))


@pytest.mark.parametrize("case", ["batch_exceeds_dim", "uniform_init", "linear"])
def test_tensor_flags_cases_outside_its_conditions(case):
    kw = {
        "batch_exceeds_dim": dict(d=4, batch_size=6),
        "uniform_init": dict(gaussian=False),
        "linear": dict(activation="identity"),
    }[case]
    obs, _ = single_query(**{"d": 10, "batch_size": 3, "width": 2000, **kw})
    with pytest.raises(UnsupportedError):
        ATTACKS.get("tensor")().check(obs)


def test_tensor_refuses_too_narrow_network():
    obs, _ = single_query(d=10, batch_size=3, width=30, seed=0)
    with pytest.raises(UnsupportedError, match="width"):
        ATTACKS.get("tensor")(max_noise=0.3).run(obs, generator=gen())


# -- analysis -------------------------------------------------------------------------------------------
class Hand(nn.Module):
    """conv 1→2 (k2, s1, no padding) on 3×3 → LeakyReLU → flatten → linear 8→3."""

    head_name = "head"

    def __init__(self, channels: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 2, bias=False)
        self.act = nn.LeakyReLU(0.2)
        self.flat = nn.Flatten()
        self.head = nn.Linear(4 * channels, 3, bias=False)

    def forward(self, x):
        return self.head(self.flat(self.act(self.conv(x))))


def test_analyze_counts_on_hand_computable_net():
    torch.manual_seed(0)
    a = analyze_model(Hand(), (1, 3, 3), 3)
    conv, head = a.layers
    # conv: 9 unknowns; 2·2·2 = 8 weight rows; 2·1·4 = 8 gradient rows. Row (o, u, v) of D₁ is output
    # channel o's 2×2 error map shifted by (u, v) in the 3×3 grid, i.e. the polynomial δ_o(s, t)·s^u t^v
    # with δ_o bilinear; the two channels' rows satisfy exactly one relation, δ_1·δ_2 = δ_2·δ_1, so
    # rank D₁ = 8 − 1 = 7. Its 2-dimensional kernel is fixed by the 8 weight rows: rank 9, determined.
    assert (conv.unknowns, conv.weight_rows, conv.gradient_rows) == (9, 8, 8)
    assert conv.rank_gradient == 7 and conv.rank == 9 and conv.deficiency == 0 and conv.exact
    assert (head.unknowns, head.weight_rows, head.gradient_rows, head.rank) == (8, 3, 24, 8)
    assert a.copa_index == 0 and a.rgap_rank_index == 0
    json.dumps(a.to_json())


def test_copa_index_weights_input_side_most():
    assert copa_index([-10, -10, 0]) == -10 + -5
    assert copa_index([0, 0, 0, 0]) == 0


def test_deficiency_predicts_layerwise_failure():
    """One output channel: 4 weight rows and 4 gradient rows share one relation, δᵀz = ⟨K, ∇K⟩, so the
    rank is 4 + 4 − 1 = 7 = C_out(n_k + n_p − C_out) < 9 unknowns: deficiency −2, COPA index −2 (L = 2),
    and R-GAP's reconstruction is no longer exact; with two channels it is."""
    from gradleak.observation import Observation
    from gradleak.protocols import FedSGD, client_update

    x = torch.rand(1, 1, 3, 3, generator=gen())
    errors = {}
    for channels in (1, 2):
        torch.manual_seed(3)
        net = Hand(channels)
        a = analyze_model(net, (1, 3, 3), 3)
        assert a.layers[0].deficiency == (-2 if channels == 1 else 0)
        assert a.layers[0].rank == a.layers[0].counting_bound == (7 if channels == 1 else 9)
        assert a.copa_index == (-2 if channels == 1 else 0)
        obs = Observation(
            model=net,
            update=client_update(net, FedSGD(), x, torch.tensor([1])),
            num_classes=3,
            input_shape=(1, 3, 3),
            batch_size=1,
        )
        res = ATTACKS.get("rgap")().run(obs, generator=gen())
        errors[channels] = float((res.images - x).abs().max())
    assert errors[2] < 1e-5 and errors[1] > 1e-3
