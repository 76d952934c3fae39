"""Early elimination of restarts (successive halving by matching distance) in the matching engine."""

import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.attacks.matching import (
    MatchingConfig,
    MatchingProblem,
    candidate_phases,
    matching_distances,
    run_matching,
)
from gradleak.errors import InputError
from gradleak.labels import recover_labels
from gradleak.scenario import Scenario, simulate


@pytest.fixture(scope="module")
def digit_case():
    obs, truth = simulate(
        Scenario(model="mlp", model_kwargs={"width": 64, "depth": 1}, dataset="digits", image_size=8, seed=2)
    )
    return obs, torch.tensor(recover_labels(obs).labels)


def test_phases_halve_the_candidates_at_each_pruning_point():
    cfg = MatchingConfig(iterations=100, restarts=8, prune_at=(0.05, 0.1, 0.2))
    assert candidate_phases(cfg) == [(5, 8), (5, 4), (10, 2), (80, 1)]
    assert candidate_phases(MatchingConfig(iterations=100, restarts=5, prune_at=(0.5,))) == [(50, 5), (50, 3)]
    assert candidate_phases(MatchingConfig(iterations=10, restarts=3)) == [(10, 3)]
    # 8 candidates cost 8·5 + 4·5 + 2·10 + 80 = 160 candidate-steps: 1.6 × one run
    steps = ATTACKS.get("inverting_gradients")(iterations=100, restarts=8, prune_at=(0.05, 0.1, 0.2)).cost_units()
    assert steps == [(5, 8), (5, 4), (10, 2), (80, 1)]


@pytest.mark.parametrize(
    "kw", [{"prune_at": (0.5,)}, {"restarts": 4, "prune_at": (0.5, 0.2)}, {"restarts": 4, "prune_at": (1.0,)}]
)
def test_bad_pruning_settings_are_refused(kw):
    with pytest.raises(InputError):
        MatchingConfig(iterations=10, **kw)


def test_the_worse_half_by_matching_distance_is_eliminated(digit_case):
    obs, labels = digit_case
    init = torch.randn(4, 1, *obs.input_shape, generator=torch.Generator().manual_seed(7))
    plain = MatchingConfig(iterations=20, restarts=4, tv=0.01)
    at_prune = {}

    def snapshot(it, X):
        if it == 4:  # the state the pruned run sees at its pruning point (iteration 5)
            at_prune["X"] = X.clone()

    run_matching(
        MatchingProblem(obs, labels, plain), batch_size=1, generator=torch.Generator(), init=init, post_step=snapshot
    )
    pruned_cfg = MatchingConfig(iterations=20, restarts=4, tv=0.01, prune_at=(0.25,))
    pruned = run_matching(
        MatchingProblem(obs, labels, pruned_cfg), batch_size=1, generator=torch.Generator(), init=init
    )
    problem = MatchingProblem(obs, labels, pruned_cfg)
    problem.clamp_(at_prune["X"])  # post_step sees the step before the box is applied
    dist = matching_distances(problem, at_prune["X"])
    worse = set(dist.argsort()[2:].tolist())
    for r in worse:  # eliminated candidates stay as they were at the pruning point, with that distance
        torch.testing.assert_close(pruned.all_x[r], at_prune["X"][r])
        assert pruned.restart_losses[r] == pytest.approx(float(dist[r]))
    assert pruned.best_restart not in worse
    assert len(pruned.restart_losses) == 4 and pruned.all_x.shape[0] == 4


def test_pruned_run_resumes_from_its_checkpoint(digit_case, interrupted_run):
    obs, labels = digit_case
    cfg = MatchingConfig(iterations=30, restarts=4, tv=0.01, prune_at=(0.2, 0.5), checkpoint_every=10)
    full, resumed = interrupted_run(lambda: MatchingProblem(obs, labels, cfg))
    assert resumed.resumed == {"from_iteration": 20, "checkpoint_iterations": 30}
    assert resumed.best_restart == full.best_restart
    torch.testing.assert_close(resumed.x, full.x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.all_x, full.all_x, rtol=1e-5, atol=1e-6)
