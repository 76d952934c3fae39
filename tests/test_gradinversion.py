"""GradInversion (Yin et al. 2021): BN term, registration, group consistency, IIP, a tiny batch attack."""

import pytest
import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.attacks.gradinversion import (
    GradInversionConfig,
    GroupConsensus,
    batch_statistics,
    load_bn_targets,
    save_batch_statistics,
)
from gradleak.attacks.gradinversion.registration import phase_correlation, register, warp
from gradleak.attacks.matching import MatchingConfig, MatchingProblem
from gradleak.errors import InputError
from gradleak.metrics import grey_psnr, score_images
from gradleak.metrics.identifiability import image_identifiability
from gradleak.scenario import Scenario, simulate


def smooth_image(size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, size + 8, size + 8, generator=g), 5, 1)
    return x[..., 2 : 2 + size, 2 : 2 + size].contiguous()


@pytest.fixture(scope="module")
def digit_batch():
    """A narrow ConvNet with BN whose running statistics come from the digits themselves."""
    sc = Scenario(
        model="convnet",
        model_kwargs={"width": 4},
        dataset="digits",
        image_size=16,
        batch_size=2,
        seed=0,
        bn_mode="train",
        unique_labels=True,
    )
    from gradleak.data import load_dataset
    from gradleak.scenario import build_scenario_model

    data = load_dataset("digits", size=16)
    model, _ = build_scenario_model(sc, data.num_classes, data.image_shape)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(data.normalization.normalize(data.images[:128]))
    return simulate(sc, dataset=data, model=model) + (data,)


def test_bn_term_gradient_pulls_statistics_toward_stored(digit_batch):
    obs, truth, _ = digit_batch
    prob = MatchingProblem(obs, truth.labels, MatchingConfig(bn=1.0))
    x = (3 * torch.randn(2, *obs.input_shape, generator=torch.Generator().manual_seed(0)) + 1).requires_grad_(True)
    losses = []
    for _ in range(20):
        loss = prob.bn_loss(x)
        (g,) = torch.autograd.grad(loss, x)
        losses.append(float(loss.detach()))
        x = (x - 0.05 * g / g.norm() * x.detach().norm()).detach().requires_grad_(True)
    assert losses[-1] < 0.5 * losses[0], losses
    # first BN layer: the candidate's batch mean moves toward the stored running mean
    bn0 = obs.model.body.bn0
    conv = obs.model.body.conv0
    with torch.no_grad():

        def gap(z):
            return float((conv(z).mean((0, 2, 3)) - bn0.running_mean).norm())

        x0 = 3 * torch.randn(2, *obs.input_shape, generator=torch.Generator().manual_seed(0)) + 1
        assert gap(x.detach()) < gap(x0)


def test_exact_batch_statistics_file(digit_batch, tmp_path):
    obs, truth, data = digit_batch
    x = data.normalization.normalize(truth.images)
    path = save_batch_statistics(obs.model, x, tmp_path / "bn.safetensors")
    targets = load_bn_targets(obs.model, path)
    assert len(targets) == 8
    prob = MatchingProblem(obs, truth.labels, MatchingConfig(bn=1.0), bn_targets=targets)
    assert float(prob.bn_loss(x)) < 1e-4  # the true batch matches its own statistics
    assert float(prob.bn_loss(torch.zeros_like(x))) > 1e-2
    stats = batch_statistics(obs.model, x)
    assert set(stats) == {f"body.bn{i}.{k}" for i in range(8) for k in ("mean", "var")}
    with pytest.raises(InputError):
        load_bn_targets(obs.model, tmp_path / "missing.safetensors")


def test_exact_batch_statistics_follow_the_clients_bn_mode(tmp_path):
    # eval-mode client with running statistics far from the batch's: the deeper layers' inputs depend on
    # the running statistics, so the exact statistics must come from the same (eval) forward
    sc = Scenario(
        model="convnet",
        model_kwargs={"width": 4},
        dataset="digits",
        image_size=16,
        batch_size=2,
        seed=0,
        bn_mode="eval",
    )
    obs, truth = simulate(sc)
    x = obs.normalization.normalize(truth.images)
    targets = load_bn_targets(obs.model, save_batch_statistics(obs.model, x, tmp_path / "bn.safetensors"))
    prob = MatchingProblem(obs, truth.labels, MatchingConfig(bn=1.0), bn_targets=targets)
    assert float(prob.bn_loss(x)) < 1e-5
    assert not obs.model.training  # the model's mode is left as it was


def test_phase_correlation_recovers_shift():
    img = smooth_image()
    moved = torch.roll(img, shifts=(3, -5), dims=(-2, -1))
    s = phase_correlation(moved, img)
    torch.testing.assert_close(s, torch.tensor([[3.0, -5.0]]), atol=0.1, rtol=0)


def test_registration_recovers_shift_and_affine():
    img = smooth_image(seed=1)
    theta = torch.tensor([[[1.05, 0.04, 0.12], [-0.03, 0.96, -0.08]]])
    moved = warp(img, theta)
    reg = register(moved, img, steps=150, lr=0.01)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # borders are extrapolated
    err_before = float((moved - img)[inner].abs().mean())
    err_after = float((reg.aligned - img)[inner].abs().mean())
    assert err_after < 0.25 * err_before, (err_before, err_after)
    translation_only = register(moved, img, affine=False)
    assert err_after <= float((translation_only.aligned - img)[inner].abs().mean()) + 1e-6


def test_identical_images_register_to_themselves():
    img = smooth_image(seed=2).repeat(3, 1, 1, 1)
    reg = register(img, img)
    torch.testing.assert_close(reg.aligned, img, atol=1e-5, rtol=0)


def _run(obs, truth, **kw):
    return ATTACKS.get("gradinversion")(**kw).run(obs, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_group_with_identical_seeds_reduces_to_single_seed(digit_batch):
    obs, truth, _ = digit_batch
    init = torch.randn(1, 2, *obs.input_shape, generator=torch.Generator().manual_seed(3))
    cfg = MatchingConfig(
        iterations=12,
        restarts=3,
        distance="layer_l2",
        lr=0.1,
        signed=False,
        schedule="cosine",
        warmup=2,
        tv=0.1,
        l2=1e-3,
        bn=100.0,
    )
    from gradleak.attacks.matching import run_matching

    results = {}
    # every mode optimises the 3 identical seeds together: one seed alone takes the engine's single-candidate path
    # (plain autograd), whose rounding differs from the batched one's on some CPUs (AVX512: 1e-3 after 12 steps)
    for mode, seeds in (("registered", 3), ("lazy", 3), ("none", 3)):
        c = MatchingConfig(**{**cfg.__dict__, "restarts": seeds})
        group = GroupConsensus(mode, 10.0, 3, 1, 0.0, c, 0)
        prob = MatchingProblem(obs, truth.labels, c, extra_terms=[group.term])
        group.box = (prob.lower, prob.upper)
        m = run_matching(
            prob,
            batch_size=2,
            generator=torch.Generator(),
            init=init.expand(seeds, -1, -1, -1, -1),
            post_step=group.post_step,
        )
        results[mode] = m
        if mode != "none":
            assert group.consensus is not None
            torch.testing.assert_close(group.compute(m.all_x), m.all_x[0], atol=1e-4, rtol=0)
    for mode in ("registered", "lazy"):
        for r in range(3):
            torch.testing.assert_close(results[mode].all_x[r], results["none"].all_x[r], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_small_batch_reconstruction_beats_grey():
    # narrow ConvNet with BN (fresh 0/1 running statistics), client in eval mode, two 16×16 digits. The BN
    # term is off: toward 0/1 statistics it is a wrong prior, and with real-data statistics the matching
    # itself stalls at a test's budget (benchmarks/gradinversion/bn_regimes_table.md)
    obs, truth = simulate(
        Scenario(
            model="convnet",
            model_kwargs={"width": 4},
            dataset="digits",
            image_size=16,
            batch_size=2,
            seed=0,
            bn_mode="eval",
        )
    )
    grey = float(grey_psnr(truth.images).mean())
    res = _run(
        obs,
        truth,
        iterations=150,
        restarts=2,
        warmup=5,
        grad_weight=1.0,
        distance="cosine",
        bn=0.0,
        group="registered",
        group_every=0.05,
        noise=0.05,
    )
    got = score_images(res.images, truth.images)
    assert got.mean_psnr > grey + 1.5, (got.mean_psnr, grey)
    assert sorted(res.labels) == sorted(truth.labels.tolist())
    assert set(res.stages) == {"best candidate", "consensus"}
    assert res.assumptions["output"] == "consensus" and res.assumptions["bn_term"].startswith("off (bn weight 0)")


def test_without_batchnorm_the_bn_term_is_off():
    obs, truth = simulate(
        Scenario(
            model="convnet",
            model_kwargs={"width": 4, "batchnorm": False},
            dataset="digits",
            image_size=16,
            batch_size=2,
            seed=1,
        )
    )
    res = _run(obs, truth, iterations=3, restarts=2, group="lazy", group_start=0.0, group_every=0.5)
    assert res.assumptions["bn_term"].startswith("off")
    assert res.assumptions["output"] == "consensus" and torch.isfinite(res.images).all()


def test_config_is_checked():
    with pytest.raises(InputError):
        GradInversionConfig(group="ransac")
    with pytest.raises(InputError):
        GradInversionConfig(output="mean")


def test_iip_hits_when_reconstruction_is_the_original(digit_batch):
    obs, truth, data = digit_batch
    index = [int(((data.images - im).abs().flatten(1).sum(1)).argmin()) for im in truth.images]
    ref = data.images[:300]
    ref = torch.cat([ref, data.images[index]])
    index = [300, 301]
    exact = image_identifiability(obs.model, truth.images.flip(0), ref, index, normalization=data.normalization)
    assert exact.precision == 1.0 and exact.order == [1, 0]
    noise = torch.rand(2, *truth.images.shape[1:], generator=torch.Generator().manual_seed(0))
    assert image_identifiability(obs.model, noise, ref, index, normalization=data.normalization).precision == 0.0


def _distance_of(obs, labels, images, distance="layer_l2"):
    """The gradient-matching distance of images in [0, 1], computed independently of the attack."""
    problem = MatchingProblem(obs, torch.tensor(labels), MatchingConfig(distance=distance))
    x = obs.normalization.normalize(images)
    return float(problem.objective(x, autograd=True)[1])


@pytest.mark.parametrize("output", ["consensus", "best"])
def test_final_loss_is_the_returned_outputs_matching_loss(digit_batch, output):
    obs, truth, _ = digit_batch
    res = _run(obs, truth, iterations=8, restarts=3, group="lazy", group_start=0.0, group_every=0.5, output=output)
    assert set(res.stages) == {"best candidate", "consensus"}
    returned = _distance_of(obs, res.labels, res.images)
    other = _distance_of(obs, res.labels, res.stages["best candidate" if output == "consensus" else "consensus"])
    assert res.final_loss == pytest.approx(returned, rel=1e-3)
    assert abs(res.final_loss - other) > 1e-3 * returned  # the other output's loss is a different number


def test_rows_without_group_term_report_the_seeds_mean_too(digit_batch):
    obs, truth, _ = digit_batch
    res = _run(obs, truth, iterations=3, restarts=2, group="none")
    assert res.assumptions["output"] == "best" and set(res.stages) == {"best candidate", "consensus"}
    assert torch.equal(res.images, res.stages["best candidate"])


def test_exact_batch_statistics_are_marked_as_oracle_input(digit_batch, tmp_path):
    from gradleak.report import AuditImages, render_html
    from gradleak.results import AttackRun, AuditResult, LabelSection, verdict

    obs, truth, data = digit_batch
    path = save_batch_statistics(obs.model, data.normalization.normalize(truth.images), tmp_path / "bn.safetensors")
    oracle = _run(obs, truth, iterations=2, restarts=1, bn_statistics=str(path))
    plain = _run(obs, truth, iterations=2, restarts=1)
    assert set(oracle.assumptions["oracle_inputs"]) == {"bn_statistics"}
    assert "oracle_inputs" not in plain.assumptions
    runs = (AttackRun("gradinversion", 0, result=oracle), AttackRun("gradinversion-running", 0, result=plain))
    assert runs[0].to_json()["assumptions"]["oracle_inputs"] == oracle.assumptions["oracle_inputs"]
    assert AttackRun.from_json(runs[0].to_json()).oracle_inputs == oracle.assumptions["oracle_inputs"]
    assert runs[1].oracle_inputs == {}
    labels = LabelSection()
    page = render_html(AuditResult(labels=labels, attacks=runs, verdict=verdict(labels, runs)), AuditImages())
    assert page.count("oracle input</span> bn_statistics") == 1  # one note, in the oracle run's section only
