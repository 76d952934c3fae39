"""Optimisation attacks on tiny models: they must beat a constant-grey guess by a wide margin."""

import pytest
import torch
import torch.nn.functional as F

from gradleak import metrics
from gradleak.attacks import ATTACKS
from gradleak.attacks.matching import MatchingConfig, MatchingProblem, Plateau, lr_factor, objective_fn, run_matching
from gradleak.errors import InputError
from gradleak.labels import recover_labels
from gradleak.metrics import score_images
from gradleak.protocols import FedAvg
from gradleak.scenario import Scenario, simulate


@pytest.fixture(scope="module")
def digit_case():
    # MLP on 8×8 digits: small enough for a few hundred iterations in a second or two
    return simulate(
        Scenario(
            model="mlp", model_kwargs={"width": 64, "depth": 1}, dataset="digits", image_size=8, batch_size=1, seed=2
        )
    )


def grey_psnr(truth):
    return float(metrics.grey_psnr(truth.images).mean())


def test_inverting_gradients_beats_grey_baseline(digit_case):
    obs, truth = digit_case
    res = ATTACKS.get("inverting_gradients")(iterations=300, tv=0.0).run(
        obs, generator=torch.Generator().manual_seed(0)
    )
    got = score_images(res.images, truth.images).mean_psnr
    assert got > grey_psnr(truth) + 15, got
    assert res.labels == truth.labels.tolist()
    assert res.loss_curve[-1][1] < res.loss_curve[0][1]


def test_ig_relative_tv_is_inverting_gradients_with_a_relative_tv_weight_and_step_1(digit_case):
    obs, truth = digit_case
    res = ATTACKS.get("ig_relative_tv")(iterations=300).run(obs, generator=torch.Generator().manual_seed(0))
    assert {k: res.config[k] for k in ("lr", "tv", "tv_scale", "signed", "schedule")} == {
        "lr": 1.0,
        "tv": 0.3,
        "tv_scale": "relative",
        "signed": True,
        "schedule": "step",
    }
    assert score_images(res.images, truth.images).mean_psnr > grey_psnr(truth) + 15
    assert res.labels == truth.labels.tolist()


def test_ig_relative_tv_plateau_is_ig_relative_tv_with_the_plateau_schedule(digit_case):
    obs, truth = digit_case
    res = ATTACKS.get("ig_relative_tv_plateau")(iterations=300).run(obs, generator=torch.Generator().manual_seed(0))
    assert {k: res.config[k] for k in ("lr", "tv", "tv_scale", "schedule")} == {
        "lr": 1.0,
        "tv": 0.3,
        "tv_scale": "relative",
        "schedule": "plateau",
    }
    assert score_images(res.images, truth.images).mean_psnr > grey_psnr(truth) + 15


def test_ig_batch_tv_takes_tv_share_0_3_for_one_image_and_1_for_a_batch(digit_case):
    def images(name, obs, **settings):
        attack = ATTACKS.get(name)(iterations=40, **settings)
        return attack.run(obs, generator=torch.Generator().manual_seed(0)).images

    one, _ = digit_case
    assert torch.equal(images("ig_batch_tv", one), images("ig_relative_tv_plateau", one))
    batch, _ = simulate(
        Scenario(model="mlp", model_kwargs={"width": 64, "depth": 1}, dataset="digits", image_size=8, batch_size=3)
    )
    got = images("ig_batch_tv", batch)
    assert torch.equal(got, images("ig_relative_tv_plateau", batch, tv=1.0))
    assert not torch.equal(got, images("ig_relative_tv_plateau", batch))
    assert torch.equal(images("ig_batch_tv", batch, batch_tv=0.3), images("ig_relative_tv_plateau", batch))


def test_on_a_signed_step_tv_at_0_2_overrides_the_matching_term_wherever_its_gradient_reaches():
    """Why Inverting Gradients without TV ends higher on one image (issue 19): on the default scenario (untrained
    ConvNet, one 32×32 photo) the matching term's gradient per pixel is far below 0.2 × TV's, so a signed step
    follows TV wherever TV's gradient is non-zero, also where the matching term points the other way."""
    from gradleak.attacks.matching import total_variation

    obs, truth = simulate(Scenario(seed=0, unique_labels=True))
    problem = MatchingProblem(obs, truth.labels, MatchingConfig(iterations=1))
    x = torch.randn((1, *obs.input_shape), generator=torch.Generator().manual_seed(0)).requires_grad_()
    (g_match,) = torch.autograd.grad(problem.objective(x, autograd=True)[0], x)
    (g_tv,) = torch.autograd.grad(total_variation(x), x)
    reached = g_tv != 0
    assert 0.5 < float(reached.float().mean()) < 1  # TV's gradient cancels on some pixels only
    assert float((g_match.abs() / (0.2 * g_tv.abs()))[reached].max()) < 0.5
    step = torch.sign(g_match + 0.2 * g_tv)
    assert bool((step == torch.sign(g_tv))[reached].all())
    against = (torch.sign(g_match) != torch.sign(g_tv)) & reached
    assert float(against.float().sum() / reached.float().sum()) > 0.1  # there the update's information is lost
    assert bool((step[~reached] == torch.sign(g_match)[~reached]).all())  # it steers only where TV cancels


def test_a_relative_tv_weight_adds_tv_at_a_share_of_each_candidates_matching_gradient():
    """ig_relative_tv (issue 19): TV's gradient joins the step at ``tv`` times the norm of the matching gradient, per
    candidate, whatever that norm is; so on the scenario above the signed step follows the matching term on most
    pixels and TV on some, instead of TV wherever its gradient reaches."""
    from gradleak.attacks.matching import add_relative_tv, total_variation

    obs, truth = simulate(Scenario(seed=0, unique_labels=True))
    problem = MatchingProblem(obs, truth.labels, MatchingConfig(iterations=1, tv=0.3, tv_scale="relative"))
    X = torch.randn((2, 1, *obs.input_shape), generator=torch.Generator().manual_seed(0))
    matching = [torch.autograd.grad(problem.objective(x.requires_grad_(), autograd=True)[0], x)[0] for x in X.clone()]
    g_match = torch.stack([matching[0], 1e3 * matching[1]])  # two scales of the matching gradient
    g, loss = add_relative_tv(X, g_match, torch.zeros(2), 0.3)
    added = (g - g_match).flatten(1)
    ratio = added.norm(dim=1) / g_match.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.tensor([0.3, 0.3]), rtol=1e-4)
    for r in range(2):
        x = X[r].clone().requires_grad_()
        (g_tv,) = torch.autograd.grad(total_variation(x), x)
        assert float(F.cosine_similarity(added[r], g_tv.flatten(), dim=0)) > 0.9999
        assert float(loss[r]) == pytest.approx(float(added[r].norm() / g_tv.norm() * total_variation(X[r])), rel=1e-4)
    follows = float((torch.sign(g[0]) == torch.sign(g_match[0])).float().mean())
    assert 0.6 < follows < 1  # the matching term steers most pixels, TV some
    (stepped,), _ = objective_fn(problem)(X[:1], None)  # the engine's step adds exactly this term
    assert torch.allclose(stepped, add_relative_tv(X[:1], g_match[:1], torch.zeros(1), 0.3)[0], atol=1e-12)
    with pytest.raises(InputError, match="needs Adam"):
        MatchingConfig(tv=0.3, tv_scale="relative", optimizer="lbfgs")
    with pytest.raises(InputError, match="tv_scale"):
        MatchingConfig(tv_scale="log")


def test_dlg_recovers_image_and_label(digit_case):
    obs, truth = digit_case
    res = ATTACKS.get("dlg")(iterations=30).run(obs, generator=torch.Generator().manual_seed(0))
    assert res.labels == truth.labels.tolist()
    assert score_images(res.images, truth.images).mean_psnr > grey_psnr(truth) + 15


def test_fedavg_replay_attack():
    from gradleak.protocols import FedAvg

    obs, truth = simulate(
        Scenario(
            model="mlp",
            model_kwargs={"width": 64, "depth": 1},
            dataset="digits",
            image_size=8,
            batch_size=1,
            seed=4,
            protocol=FedAvg(local_steps=3, local_lr=0.1),
        )
    )
    res = ATTACKS.get("inverting_gradients")(iterations=300, tv=0.0).run(
        obs, generator=torch.Generator().manual_seed(0)
    )
    assert score_images(res.images, truth.images).mean_psnr > grey_psnr(truth) + 10


def test_best_restart_is_chosen_by_matching_loss(digit_case):
    obs, truth = digit_case
    labels = torch.tensor(recover_labels(obs).labels)
    cfg = MatchingConfig(iterations=20, restarts=4, tv=0.0)
    m = run_matching(MatchingProblem(obs, labels, cfg), batch_size=1, generator=torch.Generator().manual_seed(0))
    assert len(m.restart_losses) == 4 and m.best_restart == min(range(4), key=m.restart_losses.__getitem__)
    assert torch.equal(m.x, m.all_x[m.best_restart])


def test_batched_restarts_equal_separate_runs(digit_case):
    obs, _ = digit_case
    labels = torch.tensor(recover_labels(obs).labels)
    init = torch.randn(2, 1, *obs.input_shape, generator=torch.Generator().manual_seed(5))
    cfg2 = MatchingConfig(iterations=15, restarts=2, tv=0.01)
    both = run_matching(MatchingProblem(obs, labels, cfg2), batch_size=1, generator=torch.Generator(), init=init)
    cfg1 = MatchingConfig(iterations=15, restarts=1, tv=0.01)
    for r in range(2):
        one = run_matching(
            MatchingProblem(obs, labels, cfg1), batch_size=1, generator=torch.Generator(), init=init[r : r + 1]
        )
        torch.testing.assert_close(one.x, both.all_x[r], rtol=1e-4, atol=1e-5)


def test_checkpoint_resume_matches_uninterrupted_run(digit_case, interrupted_run):
    obs, _ = digit_case
    labels = torch.tensor(recover_labels(obs).labels)
    cfg = MatchingConfig(iterations=40, checkpoint_every=10, tv=0.01)
    full, resumed = interrupted_run(lambda: MatchingProblem(obs, labels, cfg))
    torch.testing.assert_close(resumed.x, full.x, rtol=1e-5, atol=1e-6)


def test_schedules():
    cfg = MatchingConfig(iterations=80, schedule="step")
    assert lr_factor(cfg, 0) == 1 and lr_factor(cfg, 30) == pytest.approx(0.1)
    assert lr_factor(cfg, 79) == pytest.approx(1e-3)
    cos = MatchingConfig(iterations=100, schedule="cosine", warmup=10)
    assert lr_factor(cos, 0) == pytest.approx(0.1) and lr_factor(cos, 99) < 0.01


def test_the_plateau_schedule_is_the_step_schedule_moved_to_where_the_loss_went_flat():
    # not flat (yet), or flat only after 3/8: the step schedule (×0.1 at 3/8, 5/8, 7/8 of the run), also at budgets
    # where 2/5 and 4/5 of the rest round differently from 5/8 and 7/8 (10: 5 against 6)
    for n in (10, 80, 123):
        step, plateau = MatchingConfig(iterations=n, schedule="step"), MatchingConfig(iterations=n, schedule="plateau")
        paper = [0.1 ** sum(it >= k * n // 8 for k in (3, 5, 7)) for it in range(n)]
        assert [lr_factor(step, it) for it in range(n)] == paper
        assert [lr_factor(plateau, it) for it in range(n)] == paper
        assert [lr_factor(plateau, it, 3 * n // 8) for it in range(n)] == paper
    plateau = MatchingConfig(iterations=80, schedule="plateau")
    # flat from iteration 10: ×0.1 there, then at 2/5 and 4/5 of the 70 iterations that follow (38, 66)
    got = [lr_factor(plateau, it, 10) for it in (9, 10, 37, 38, 65, 66, 79)]
    assert got == pytest.approx([1, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    # flat only after 3/8 of the run: the step schedule's first decay comes first
    assert lr_factor(plateau, 29, 45) == 1 and lr_factor(plateau, 30, 45) == pytest.approx(0.1)


def test_plateau_decays_after_patience_iterations_without_a_fall_of_rel():
    flat = Plateau(patience=20, rel=0.01)
    for it in range(80):
        flat.update(it, 0.98 ** min(it, 29))  # falls 2% an iteration up to iteration 29, then stays
    assert flat.first_decay == 50  # iterations 30..49 are the 20 without a 1% fall; decay from 50 on
    slow = Plateau(patience=20, rel=0.01)
    for it in range(200):
        slow.update(it, 0.995**it)  # 1% every 2 iterations: never flat
    assert slow.first_decay is None
    noisy = Plateau(patience=20, rel=0.01)
    for it in range(60):
        noisy.update(it, 1.0 + 0.009 * (it % 2))  # jitters below 1% around its lowest value
    assert noisy.first_decay == 21  # iteration 0 sets the lowest value; 1..20 do not fall by 1%


def plateau_of(losses, patience=20):
    """The plateau schedule's state after a run's logged losses, one an iteration."""
    plateau = Plateau(patience)
    for it, loss in enumerate(losses):
        plateau.update(it, loss)
    return plateau


@pytest.mark.parametrize("patience", [20, 10])
def test_the_engine_decays_its_step_where_plateau_finds_the_logged_loss_flat(digit_case, patience):
    obs, _ = digit_case
    labels = torch.tensor(recover_labels(obs).labels)
    cfg = MatchingConfig(iterations=200, lr=1.0, schedule="plateau", patience=patience, log_every=1)
    problem = MatchingProblem(obs, labels, cfg)
    before, after, losses = [], [], []  # each step's candidate before it (in the box) and after it (not yet clamped)

    def record(it, X):
        after.append(X.clone())
        before.append(X.clone())
        problem.clamp_(before[-1])

    run_matching(
        problem,
        batch_size=1,
        generator=torch.Generator().manual_seed(0),
        on_step=lambda s: losses.append(s.loss),
        post_step=record,
    )
    d = plateau_of(losses, patience).first_decay
    assert d is not None and d < 3 * 200 // 8  # this run went flat before the step schedule's first decay
    # a signed Adam step moves each pixel by at most lr × the schedule's factor, and the largest moves reach it
    moves = [float((b - a).abs().max()) for a, b in zip(before, after[1:])]  # moves[i]: the step of iteration i + 1
    assert all(m <= lr_factor(cfg, it + 1, d) * (1 + 1e-5) for it, m in enumerate(moves))
    assert moves[d - 2] > 0.2 and moves[d - 1] <= 0.1 * (1 + 1e-5)  # step 1.0 up to d, 0.1 from d on


def test_a_plateau_run_resumes_from_its_checkpoint_as_if_uninterrupted(digit_case, interrupted_run):
    obs, _ = digit_case
    labels = torch.tensor(recover_labels(obs).labels)
    cfg = MatchingConfig(iterations=240, checkpoint_every=10, lr=1.0, schedule="plateau", log_every=1)
    losses = []
    run_matching(
        MatchingProblem(obs, labels, cfg),
        batch_size=1,
        generator=torch.Generator().manual_seed(1),
        on_step=lambda s: losses.append(s.loss),
    )
    flat = plateau_of(losses)
    # this run's loss last fell by 1% before its checkpoint at 60 and went flat after it, before 3/8 of the run (90):
    # a resumed run that forgot how long the loss has been flat would decay later
    assert flat.first_decay is not None and 60 < flat.first_decay < 60 + flat.patience
    full, resumed = interrupted_run(lambda: MatchingProblem(obs, labels, cfg), stop_at=65)
    torch.testing.assert_close(resumed.x, full.x, rtol=1e-5, atol=1e-6)


def test_bn_term_pulls_statistics_toward_running_stats():
    obs, _ = simulate(
        Scenario(model="convnet", model_kwargs={"width": 4}, dataset="digits", image_size=16, batch_size=2, seed=0)
    )
    bn = obs.model.body.bn0
    bn.running_mean.fill_(0.5)
    cfg = MatchingConfig(iterations=1, bn=1.0)
    prob = MatchingProblem(obs, torch.tensor([0, 1]), cfg)
    x = torch.randn(2, *obs.input_shape, requires_grad=True)
    before = prob.bn_loss(x)
    (g,) = torch.autograd.grad(before, x)
    after = prob.bn_loss((x - 0.05 * g).detach())
    assert after < before


def test_checkpoint_of_another_observation_is_refused(digit_case, tmp_path):
    from gradleak.errors import InputError

    obs, _ = digit_case
    other, _ = simulate(
        Scenario(
            model="mlp", model_kwargs={"width": 64, "depth": 1}, dataset="digits", image_size=8, batch_size=1, seed=9
        )
    )
    cfg = MatchingConfig(iterations=5, checkpoint_every=5)
    ck = tmp_path / "c.ckpt"
    run_matching(MatchingProblem(obs, torch.tensor([0]), cfg), batch_size=1, generator=torch.Generator(), checkpoint=ck)
    with pytest.raises(InputError, match="another run"):
        run_matching(
            MatchingProblem(other, torch.tensor([0]), cfg), batch_size=1, generator=torch.Generator(), checkpoint=ck
        )


def test_finished_checkpoint_extends_to_more_iterations(digit_case, tmp_path):
    from gradleak.errors import CheckpointError

    obs, _ = digit_case
    labels = torch.tensor(recover_labels(obs).labels)

    def run(iterations, checkpoint=None):
        cfg = MatchingConfig(iterations=iterations, checkpoint_every=10, schedule="constant")
        problem = MatchingProblem(obs, labels, cfg)
        return run_matching(problem, batch_size=1, generator=torch.Generator().manual_seed(3), checkpoint=checkpoint)

    ck = tmp_path / "run.ckpt"
    first = run(20, ck)
    assert first.resumed is None
    extended = run(40, ck)
    assert extended.resumed == {"from_iteration": 20, "checkpoint_iterations": 20}
    assert extended.iterations == 40 and extended.curve[-1][0] == 39
    # a constant schedule does not depend on the budget: the extended run is the 40-iteration run
    torch.testing.assert_close(extended.x, run(40).x, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="beyond this run's 10"):
        run(10, ck)


@pytest.mark.parametrize("protocol, joint", [(None, False), (FedAvg(2, 0.1), False), (None, True)])
def test_single_candidate_autograd_step_equals_the_vmapped_step(protocol, joint):
    # one restart runs through plain autograd, several through vmap(torch.func): same numbers
    sc = Scenario(
        model="convnet",
        model_kwargs={"width": 4},
        dataset="digits",
        image_size=16,
        batch_size=2,
        seed=1,
        bn_mode="train",
        **({"protocol": protocol} if protocol else {}),
    )
    obs, truth = simulate(sc)
    cfg = MatchingConfig(iterations=1, restarts=2, tv=0.1, l2=0.01, bn=0.5, optimize_labels=joint)
    step = objective_fn(MatchingProblem(obs, None if joint else truth.labels, cfg))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, 2, *obs.input_shape, generator=g)
    Y = torch.randn(1, 2, obs.num_classes, generator=g) if joint else None
    one_g, (one_loss, one_match) = step(X, Y)
    two_g, (two_loss, two_match) = step(X.expand(2, -1, -1, -1, -1), None if Y is None else Y.expand(2, -1, -1))
    assert len(one_g) == (2 if joint else 1)
    for a, b in zip(one_g, two_g):
        torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(a[0], b[1], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(one_loss[0], two_loss[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(one_match[0], two_match[1], atol=1e-6, rtol=1e-5)


def test_inverting_gradients_passes_its_plateau_patience_to_the_engine(digit_case):
    obs, _ = digit_case

    def run(**settings):
        return ATTACKS.get("ig_relative_tv_plateau")(iterations=120, **settings).run(
            obs, generator=torch.Generator().manual_seed(0)
        )

    with pytest.raises(InputError, match="patience must be >= 1"):
        run(patience=0)
    default, short = run(), run(patience=10)
    assert default.config["patience"] == 20 and short.config["patience"] == 10
    assert torch.equal(default.images, run(patience=20).images)
    assert not torch.equal(default.images, short.images)  # the first decay came earlier
