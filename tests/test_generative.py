"""Generative priors: the l1-ball projection, latent and feature-domain search, prior training and files."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gradleak.attacks import ATTACKS
from gradleak.attacks.generative import GGL, GIFD, LatentAdam, project_l1_ball
from gradleak.attacks.generative.gifd import PAPER_RADIUS
from gradleak.attacks.generative.search import defense_estimate, latent_problem, project_sphere
from gradleak.attacks.matching import MatchingConfig
from gradleak.data import Normalization, load_dataset
from gradleak.metrics import psnr
from gradleak.models import MODELS
from gradleak.observation import Observation
from gradleak.prior import Generator, GeneratorConfig, load_prior, save_prior
from gradleak.prior.train import TrainConfig, train_prior
from gradleak.protocols import FedSGD, client_update


# -- the l1-ball projection --------------------------------------------------------------------------------
def brute_force_l1(v: np.ndarray, r: float) -> np.ndarray:
    """Enumerate every support S and sign pattern: on S, w = v − θ·s with θ from Σ|w| = r; keep the
    feasible (signs preserved, ‖w‖₁ ≤ r) candidate closest to v (plus v itself if inside)."""
    if np.abs(v).sum() <= r:
        return v.copy()
    best, best_d = np.zeros_like(v), float(np.sum(v**2))
    n = len(v)
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            for signs in itertools.product((-1.0, 1.0), repeat=k):
                s = np.array(signs)
                theta = (np.dot(s, v[list(S)]) - r) / k
                w = np.zeros_like(v)
                w[list(S)] = v[list(S)] - theta * s
                if np.any(w[list(S)] * s < -1e-12) or np.abs(w).sum() > r + 1e-9:
                    continue
                d = float(np.sum((w - v) ** 2))
                if d < best_d:
                    best, best_d = w, d
    return best


def test_l1_projection_is_exact():
    rng = np.random.default_rng(0)
    rows, radii = [], []
    for n in (1, 2, 3, 5, 6):
        for _ in range(4):
            rows.append(rng.normal(size=n) * rng.uniform(0.1, 3))
            radii.append(float(rng.uniform(0.05, 4)))
    for v, r in zip(rows, radii):
        got = project_l1_ball(torch.tensor(v)[None], r)[0].numpy()
        want = brute_force_l1(v, r)
        np.testing.assert_allclose(got, want, atol=1e-9)
        # and the KKT-free check: a generic QP solver agrees
        qp = minimize(
            lambda w, v=v: 0.5 * np.sum((w - v) ** 2),
            np.zeros_like(v),
            jac=lambda w, v=v: w - v,
            constraints=[{"type": "ineq", "fun": lambda w, r=r: r - np.abs(w).sum()}],
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 500},
        )
        np.testing.assert_allclose(got, qp.x, atol=1e-4)


def test_l1_projection_batched_per_row_radius_and_ties():
    v = torch.tensor([[3.0, -3.0, 1.0], [0.1, 0.2, -0.1], [1.0, 1.0, 1.0], [2.0, -1.0, 0.5]], dtype=torch.float64)
    r = torch.tensor([2.0, 1.0, 1.5, 0.0], dtype=torch.float64)
    w = project_l1_ball(v, r)
    assert torch.allclose(w[0], torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    assert torch.equal(w[1], v[1])  # inside: unchanged
    assert torch.allclose(w[2], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(w[3], torch.zeros(3, dtype=torch.float64))
    big = torch.randn(64, 500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = project_l1_ball(big, 7.0)
    assert torch.allclose(out.abs().sum(1), torch.full((64,), 7.0, dtype=torch.float64))


# -- a tiny prior and victim --------------------------------------------------------------------------------
def tiny_generator(seed: int = 0, classes: int = 0) -> Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(GeneratorConfig(size=8, channels=1, z_dim=4, width=4, num_classes=classes))
    G.eval()
    G.requires_grad_(False)
    return G


def tiny_observation(images01: torch.Tensor, labels: torch.Tensor, defense=None) -> Observation:
    shape = tuple(images01.shape[1:])
    torch.manual_seed(3)
    model = MODELS.get("mlp")(4, shape, width=32, depth=1)
    norm = Normalization.identity(shape[0])
    update = client_update(model, FedSGD(), norm.normalize(images01), labels)
    if defense is not None:
        update = defense(update, generator=torch.Generator().manual_seed(0))
    return Observation(
        model=model, update=update, num_classes=4, input_shape=shape, batch_size=len(labels), normalization=norm
    )


def test_adam_latent_search_has_its_own_name_and_ggl_is_gradient_free():
    assert ATTACKS.get("latent_adam") is LatentAdam
    assert ATTACKS.get("ggl") is GGL
    assert "optimizer" not in GGL.Config.__dataclass_fields__ and "lr" not in GGL.Config.__dataclass_fields__
    assert GGL().cost_units() == [(500, 50)]  # official: 500 rounds of 50 candidates


def test_latent_search_recovers_the_generating_latent(tmp_path):
    G = tiny_generator()
    path = save_prior(G, tmp_path / "prior.safetensors")
    z_star = project_sphere(torch.randn(1, 4, generator=torch.Generator().manual_seed(5)), 2.0)
    x_star = (G(z_star) + 1) / 2
    obs = tiny_observation(x_star, torch.tensor([1]))
    res = ATTACKS.get("latent_adam")(prior=str(path), iterations=150, restarts=4, distance="cosine", lr=0.1).run(
        obs, generator=torch.Generator().manual_seed(0)
    )
    assert res.final_loss < 1e-3
    assert float(psnr(res.images, x_star).mean()) > 30


def test_cmaes_latent_search_recovers_the_image(tmp_path):
    G = tiny_generator()
    path = save_prior(G, tmp_path / "prior.safetensors")
    w_star = torch.tanh(torch.randn(1, 4, generator=torch.Generator().manual_seed(5)))  # inside GGL's box
    x_star = (G(w_star) + 1) / 2
    obs = tiny_observation(x_star, torch.tensor([2]))
    res = ATTACKS.get("ggl")(prior=str(path), iterations=40, population=16, sigma=1.0).run(
        obs, generator=torch.Generator().manual_seed(0)
    )
    assert float(psnr(res.images, x_star).mean()) > 25
    assert res.assumptions["gradient_queries"] == 40 * 16


def test_cmaes_latent_stays_inside_the_tanh_box():
    G = tiny_generator()
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    obs = tiny_observation(x, torch.tensor([1]))
    attack = GGL(prior=G, iterations=5, population=8, sigma=50.0)  # raw candidates far outside (−1, 1)
    problem, _ = latent_problem(obs, torch.tensor([1]), MatchingConfig(distance="l2", box=False), True)
    found = attack.search_latent(problem, obs, torch.tensor([1]), 1, generator=torch.Generator().manual_seed(0))
    assert found.latent.shape == (1, 4)
    assert float(found.latent.abs().max()) <= 1.0  # the closed box: float32 tanh saturates at ±1
    assert float(found.latent.abs().max()) > 0.9  # σ = 50 saturates tanh: only the bound holds it
    x_hat = (G(found.latent) + 1) / 2
    assert float(problem.objective(x_hat)[1]) == pytest.approx(found.match, rel=1e-4)


def test_feature_stages_stay_inside_their_l1_balls_and_best_stage_wins(tmp_path):
    G = tiny_generator(classes=4)
    path = save_prior(G, tmp_path / "prior.safetensors")
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(2, 1, 8, 8, generator=gen)  # off the generator's manifold
    obs = tiny_observation(x, torch.tensor([0, 3]))
    attack = GIFD(prior=str(path), iterations=60, restarts=3, radius=(0.02, 0.05))
    stages, _, _ = attack.search_stages(obs, torch.tensor([0, 3]), 2, generator=torch.Generator().manual_seed(0))
    assert [s.name for s in stages] == ["latent", "h0", "h1"]
    assert torch.allclose(stages[0].variables.norm(dim=-1), torch.full((3, 2), 2.0), atol=1e-4)
    for s in stages[1:]:
        dist = (s.variables - s.centre).abs().flatten(2).sum(-1)
        assert torch.all(dist <= s.radius * (1 + 1e-5) + 1e-6), (dist, s.radius)
    # the configured schedule: radius per entry × the map's size, the same for every sample and restart
    for s, per_entry in zip(stages[1:], (0.02, 0.05)):
        assert torch.equal(s.radius, torch.full((3, 2), per_entry * s.centre[0, 0].numel()))
    res = attack.run(obs, generator=torch.Generator().manual_seed(0))
    best = min(float(s.match.min()) for s in stages)
    assert res.final_loss == pytest.approx(best, rel=1e-4, abs=1e-6)
    assert set(res.stages) == {"latent", "h0", "h1"}
    assert res.assumptions["chosen_stage"] in res.stages


def test_gifd_defaults_follow_the_official_code():
    c = GIFD().config
    assert c.lr == c.feature_lr == 0.1 and c.restarts == 4 and c.latent_fraction is None
    # official BigGAN radii 2000, 2500, 3000 over maps of 2048·4·4, 2048·8·8, 2048·8·8 entries
    assert PAPER_RADIUS[:3] == pytest.approx((2000 / 32768, 2500 / 131072, 3000 / 131072))
    assert c.radius == PAPER_RADIUS


def test_defense_estimate_copies_the_sparsity_mask_and_clip_bound():
    from gradleak.defenses import Clip, Sparsify

    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def defense(u, generator):
        return Clip(0.5)(Sparsify(0.9)(u, generator=generator), generator=generator)

    obs = tiny_observation(x, torch.tensor([1]), defense=defense)
    transform, est = defense_estimate(obs)
    clean = tiny_observation(x, torch.tensor([1])).update
    est_update = transform(clean)
    for k in obs.update:
        assert torch.allclose(est_update[k], obs.update[k], atol=1e-6)
    assert est["clip_bound"] == pytest.approx(0.5, rel=1e-5)


# -- training and files ------------------------------------------------------------------------------------
def test_prior_trains_resumes_and_reloads_identically(tmp_path):
    data = load_dataset("digits", size=8).subset(list(range(200)))
    gcfg = GeneratorConfig(size=8, channels=1, z_dim=8, width=8, num_classes=10)
    samples = []
    cfg = TrainConfig(steps=6, batch_size=8, checkpoint_every=3, sample_every=3)
    G = train_prior(
        data, gcfg, cfg, checkpoint=tmp_path / "ckpt.safetensors", on_sample=lambda step, im: samples.append(step)
    )
    assert samples == [3, 6]
    path = save_prior(G, tmp_path / "prior.safetensors")
    H = load_prior(path)
    a = G.sample(5, generator=torch.Generator().manual_seed(11))
    b = H.sample(5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and a.shape == (5, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    # the training checkpoint loads too, and a run stopped at step 3 resumes to the same weights
    from_checkpoint = load_prior(tmp_path / "ckpt.safetensors")
    assert torch.equal(from_checkpoint.sample(5, generator=torch.Generator().manual_seed(11)), a)
    train_prior(
        data,
        gcfg,
        TrainConfig(steps=3, batch_size=8, checkpoint_every=3, sample_every=3),
        checkpoint=tmp_path / "ckpt2.safetensors",
    )
    resumed = train_prior(data, gcfg, cfg, checkpoint=tmp_path / "ckpt2.safetensors")
    for p, q in zip(resumed.state_dict().values(), G.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6)


def test_train_prior_command_and_audit_with_prior(tmp_path):
    from gradleak.cli import main

    out = tmp_path / "prior"
    assert (
        main(
            [
                "train-prior",
                "--data",
                "digits",
                "--image-size",
                "8",
                "--steps",
                "4",
                "--batch-size",
                "8",
                "--width",
                "4",
                "--z-dim",
                "4",
                "--out",
                str(out),
                "--quiet",
                "--sample-every",
                "2",
            ]
        )
        == 0
    )
    assert (out / "prior.safetensors").exists() and (out / "samples" / "step_000004.png").exists()
    audit = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                "--model",
                "mlp",
                "--data",
                "digits",
                "--image-size",
                "8",
                "--attack",
                "ggl",
                "--attack",
                "gifd",
                "--prior",
                str(out / "prior.safetensors"),
                "--iterations",
                "12",
                "--out",
                str(audit),
                "--quiet",
            ]
        )
        == 0
    )
    import json

    res = json.loads((audit / "results.json").read_text())
    gifd = next(a for a in res["attacks"] if a["name"] == "gifd")
    assert gifd["error"] is None and set(gifd["images"]["stages"]) == {"latent", "h0", "h1"}
    assert next(a for a in res["attacks"] if a["name"] == "ggl")["error"] is None


def test_attacks_without_prior_say_what_to_do():
    from gradleak.errors import UnsupportedError

    obs = tiny_observation(torch.rand(1, 1, 8, 8), torch.tensor([1]))
    for name in ("ggl", "latent_adam", "gifd"):
        with pytest.raises(UnsupportedError, match="train-prior"):
            ATTACKS.get(name)().check(obs)
