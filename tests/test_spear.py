"""SPEAR (Dimitrov et al., NeurIPS 2024): exact batch recovery through a first Linear+ReLU layer, its
per-sample evidence, its refusals and its determinism."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.attacks.analytic.spear import SPEAR, evaluate
from gradleak.client import client_round
from gradleak.errors import UnsupportedError
from gradleak.metrics import score_images
from gradleak.models import build_model
from gradleak.observation import Observation
from gradleak.protocols import FedAvg, FedSGD
from gradleak.scenario import Scenario, simulate


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(dataset: str, b: int, width: int, seed: int, **kw):
    sc = Scenario(model="mlp", model_kwargs={"width": width}, dataset=dataset, batch_size=b, seed=seed, **kw)
    return simulate(sc)


def per_sample_error(images: torch.Tensor, truth: torch.Tensor) -> tuple[list[float], list[float]]:
    """(max abs error, PSNR) of each true image against the reconstruction matched to it."""
    s = score_images(images, truth)
    return [float((images[j] - truth[i]).abs().max()) for i, j in enumerate(s.order)], s.psnr


@pytest.mark.parametrize(("dataset", "b", "width", "seed"), [("photos", 4, 300, 3), ("digits", 8, 200, 0)])
def test_exact_recovery_with_repeated_labels(dataset, b, width, seed):
    obs, truth = mlp(dataset, b, width, seed)
    assert len(set(truth.labels.tolist())) < b  # the draw repeats a label
    res = ATTACKS.get("spear")().run(obs, generator=gen())
    err, psnr = per_sample_error(res.images, truth.images)
    assert max(err) < 1e-4
    assert min(psnr) >= 60
    a = res.assumptions
    assert a["exact"] == [True] * b
    assert max(a["pattern_mismatch"]) == 0.0
    assert a["gradient_residual"] < 1e-5
    assert min(a["zero_fraction"]) > 0.3


def test_every_sample_is_its_own_image_not_a_mixture():
    """A method that returned mixtures of the batch (e.g. rows of ∂L/∂W / ∂L/∂b) would fail here: each
    reconstruction must equal one private image, pixel for pixel."""
    obs, truth = mlp("photos", 8, 400, 1)
    res = SPEAR().run(obs, generator=gen())
    s = score_images(res.images, truth.images)
    assert sorted(s.order) == list(range(8))  # a one-to-one matching
    for i, j in enumerate(s.order):
        assert (res.images[j] - truth.images[i]).abs().max() < 1e-4
        others = [k for k in range(8) if k != i]
        assert min(float((res.images[j] - truth.images[k]).abs().max()) for k in others) > 0.1


def test_the_evidence_flags_a_mixed_direction():
    """Replacing one recovered direction by a mixture of two makes the ReLU-pattern check disagree."""
    obs, truth = mlp("digits", 4, 200, 0)
    w, b = obs.model.body[1].weight.double(), obs.model.body[1].bias.double()
    g, gb = obs.update["body.1.weight"].double(), obs.update["body.1.bias"].double()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    lf, r = u[:, :4] * s[:4], vh[:4]
    x = obs.normalization.normalize(truth.images).flatten(1).double()
    q = torch.linalg.lstsq(x.T, r.T).solution.T  # the true disaggregation: R = Q Xᵀ
    dirs = q / q.norm(dim=0)
    lh = lf / lf.norm(dim=1, keepdim=True)
    dead = g.abs().amax(1)[:, None] == 0  # units no sample activates: zero in every column

    def zeros(d: torch.Tensor) -> torch.Tensor:
        return ((lh @ d).abs() <= 1e-6) | dead

    right = evaluate(dirs, lf, r, gb, w, b, zeros(dirs), two_sided=True)
    mixed = dirs.clone()
    mixed[:, 0] = (dirs[:, 0] + dirs[:, 1]) / (dirs[:, 0] + dirs[:, 1]).norm()
    wrong = evaluate(mixed, lf, r, gb, w, b, zeros(mixed), two_sided=True)
    assert right is not None and wrong is not None
    assert float(right.mismatch.max()) == 0.0
    assert float(wrong.mismatch[0]) > 0.05


def test_fedavg_delta_is_recovered_exactly():
    obs, truth = mlp("photos", 4, 300, 3, protocol=FedAvg(local_steps=5, local_lr=1e-2))
    res = SPEAR().run(obs, generator=gen())
    err, _ = per_sample_error(res.images, truth.images)
    assert max(err) < 1e-4
    assert res.assumptions["exact"] == [True] * 4
    assert res.assumptions["gradient_residual"] is None  # FedSGD only


def test_same_result_for_the_same_generator_and_thread_count():
    obs, _ = mlp("digits", 8, 200, 2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = SPEAR().run(obs, generator=gen(5))
        torch.set_num_threads(2)
        two = SPEAR().run(obs, generator=gen(5))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one.images, two.images)
    assert one.assumptions["samples_drawn"] == two.assumptions["samples_drawn"]


def test_sample_budget_exhausted_is_a_refusal_not_an_image():
    obs, _ = mlp("photos", 12, 300, 0)
    with pytest.raises(UnsupportedError, match="directions in 4096 sampled"):
        SPEAR(max_samples=4096).run(obs, generator=gen())


def refusal(obs: Observation) -> str:
    with pytest.raises(UnsupportedError) as e:
        SPEAR().check(obs)
    return str(e.value)


def test_refusals_name_the_unmet_need():
    digits = {"dataset": "digits", "image_size": 8, "seed": 0}
    leaky = simulate(Scenario(model="fcn3", model_kwargs={"bias": True}, batch_size=2, **digits))[0]
    assert "not a ReLU" in refusal(leaky)
    no_bias = simulate(Scenario(model="fcn3", model_kwargs={"activation": "relu"}, batch_size=2, **digits))[0]
    assert "no bias" in refusal(no_bias)
    conv = simulate(Scenario(model="cnn6", batch_size=2, **digits))[0]
    assert "not a fully connected" in refusal(conv)
    narrow = simulate(Scenario(model="mlp", model_kwargs={"width": 8}, batch_size=8, **digits))[0]
    assert "B < m" in refusal(narrow)
    unknown = simulate(Scenario(model="mlp", batch_size=2, server_knows_batch_size=False, **digits))[0]
    assert "batch size is unknown" in refusal(unknown)


def test_duplicate_samples_are_refused_as_rank_deficient():
    obs, truth = mlp("digits", 3, 64, 0)
    x = obs.normalization.normalize(truth.images)
    x[2] = x[0]  # the client's batch holds one image twice
    update, _ = client_round(obs.model, FedSGD(), x, truth.labels, generator=gen())
    dup = obs.with_update(update)
    assert "numerical rank 2 < B=3" in refusal(dup)


def test_a_wrong_batch_size_is_refused():
    obs, _ = mlp("digits", 4, 64, 0)
    small = Observation(
        model=obs.model, update=obs.update, num_classes=obs.num_classes, input_shape=obs.input_shape, batch_size=3
    )
    assert "rank above B=3" in refusal(small)


def test_analyze_batch_limits_agree_with_the_attacks_refusals():
    from gradleak.analyze import batch_recovery

    for model, kw in (("mlp", {"width": 64}), ("convnet", {"width": 8})):
        claims = {b.attack: b for b in batch_recovery(build_model(model, 10, (1, 16, 16), **kw))}
        for b in (4, 64, 65):  # inside and beyond the mlp's limits (spear: B < 64 units; cocktail: B ≤ 64)
            sc = Scenario(model=model, model_kwargs=kw, dataset="digits", image_size=16, batch_size=b, seed=b)
            obs, _ = simulate(sc)
            for name in ("spear", "cocktail-spear", "cocktail"):
                claim = claims[name]
                admitted = not ATTACKS.get(name)().problems(obs)
                assert admitted == (claim.applies and b <= claim.max_batch), (model, b, claim)
    assert claims["spear"].applies is False and claims["cocktail"].applies is False  # convnet: a conv first layer


def test_the_audit_runs_the_batch_attacks_and_reports_their_refusals():
    from gradleak.auditing import AuditPlan, audit_scenario, make_attacks

    plan = AuditPlan(attacks=make_attacks(["spear", "cocktail-spear", "cocktail"]))
    mlp = Scenario(model="mlp", model_kwargs={"width": 256}, dataset="photos", batch_size=4, seed=3)
    result, _ = audit_scenario(mlp, plan)
    runs = {r.name: r for r in result.attacks}
    assert runs["spear"].error is None and runs["spear"].mean_psnr >= 60
    assert runs["cocktail-spear"].error is None and runs["cocktail-spear"].mean_psnr >= 60
    assert runs["cocktail"].error is None and runs["cocktail"].mean_psnr > 20
    conv = Scenario(model="convnet", model_kwargs={"width": 8}, dataset="digits", image_size=16, batch_size=4, seed=3)
    refused, _ = audit_scenario(conv, plan)
    assert all(r.result is None and "not a fully connected" in r.error for r in refused.attacks)
