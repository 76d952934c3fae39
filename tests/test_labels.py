"""Label recovery: every method on a case built for its assumptions, and a loud refusal on one that breaks
them; exact soft labels (Wang et al. 2024) with and without a bias; the necessary-condition check; scores."""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from gradleak.data import load_dataset
from gradleak.errors import UnsupportedError
from gradleak.labels import LABEL_METHODS, recover_labels
from gradleak.labels.augmented import Wang2024, triple_scales
from gradleak.labels.llg import round_counts
from gradleak.metrics.labels import EXACT_TOL, exact_recovery, label_accuracy, max_abs_error, score_labels
from gradleak.models import MLP
from gradleak.protocols import FedSGD, client_update
from gradleak.scenario import Scenario, simulate


@functools.cache
def digits():
    return load_dataset("digits", size=8)


def observe(batch_size=1, unique=True, seed=0, model_kwargs=None, model=None, **aug):
    sc = Scenario(
        model="mlp",
        model_kwargs=model_kwargs or {},
        dataset="digits",
        image_size=8,
        batch_size=batch_size,
        unique_labels=unique,
        seed=seed,
        **aug,
    )
    return simulate(sc, dataset=digits(), model=model)


def head_input(obs, images):
    seen = []
    h = obs.head_module().register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        obs.model(obs.normalization.normalize(images))
    h.remove()
    return seen[0]


# -- hard labels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,B,unique",
    [
        ("idlg", 1, True),
        ("sum", 6, True),
        ("gradinversion-min", 6, True),
        ("llg-simple", 6, True),
        ("llg-bias-corrected", 24, False),
        ("llg-whitebox", 24, False),
    ],
)
def test_method_recovers_labels_under_its_assumptions(method, B, unique):
    obs, gt = observe(B, unique, seed=1)
    res = LABEL_METHODS.get(method)().recover(obs)
    assert len(res.labels) == B
    assert label_accuracy(gt.labels.tolist(), res.labels) == 1.0


@pytest.mark.parametrize("method", ["llg-bias-corrected", "llg-whitebox"])
def test_count_methods_recover_repeated_labels_without_bias_where_they_can(method):
    obs, gt = observe(24, False, seed=2, model_kwargs={"bias": False})
    if method == "llg-bias-corrected":
        with pytest.raises(UnsupportedError, match="no bias"):
            LABEL_METHODS.get(method)().recover(obs)
    else:
        res = LABEL_METHODS.get(method)().recover(obs)
        assert label_accuracy(gt.labels.tolist(), res.labels) >= 0.95


def test_min_rule_refuses_batches_larger_than_the_classes():
    obs, _ = observe(12, False)
    with pytest.raises(UnsupportedError, match=r"batch size \(12\) <= classes \(10\)"):
        LABEL_METHODS.get("gradinversion-min")().recover(obs)


def test_min_rule_refuses_negative_features():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, 10))  # no ReLU before the head
    obs, _ = observe(4, model=model)
    with pytest.raises(UnsupportedError, match="non-negative features"):
        LABEL_METHODS.get("gradinversion-min")().recover(obs)


def test_single_sample_and_count_methods_refuse_what_they_cannot_do():
    obs, _ = observe(4)
    with pytest.raises(UnsupportedError, match="single sample"):
        LABEL_METHODS.get("idlg")().recover(obs)
    sc = Scenario(model="mlp", dataset="digits", image_size=8, batch_size=4, server_knows_batch_size=False)
    hidden, _ = simulate(sc, dataset=digits())
    for name in ("llg-simple", "llg-bias-corrected", "llg-whitebox"):
        with pytest.raises(UnsupportedError, match="batch size is unknown"):
            LABEL_METHODS.get(name)().recover(hidden)


def test_round_counts_is_nearest_with_the_right_total():
    assert round_counts(np.array([2.6, 0.3, 1.2, -0.4]), 4).tolist() == [3, 0, 1, 0]
    assert round_counts(np.array([5.0, 5.0]), 4).sum() == 4
    assert round_counts(np.array([0.1, 0.1, 0.1]), 3).sum() == 3


def test_every_registered_method_but_fedavg_recovers_a_single_fedsgd_label():
    obs, gt = observe(1, label_smoothing=0.1)
    refused = {}
    for name, _ in LABEL_METHODS.items():
        try:
            res = recover_labels(obs, name)
        except UnsupportedError as e:
            refused[name] = str(e)
            continue
        assert res.labels == gt.labels.tolist(), name
    assert set(refused) == {"fedavg"}, refused  # only the FedAvg-delta method needs another observation
    assert "FedAvg parameter delta" in refused["fedavg"]


# -- soft labels (Wang et al. 2024) --------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("aug", [{"label_smoothing": 0.1}, {"label_smoothing": 0.35}, {"mixup": 0.4}])
def test_wang2024_recovers_soft_labels_and_features_exactly(bias, aug):
    for seed in range(3):
        obs, gt = observe(1, seed=seed, model_kwargs={"bias": bias}, **aug)
        res = LABEL_METHODS.get("wang2024")().recover(obs)
        assert res.soft.shape == gt.targets.shape
        assert max_abs_error(res.soft, gt.targets) < 1e-4
        h = head_input(obs, gt.images)
        assert torch.allclose(res.features, h, rtol=1e-4, atol=1e-5 * float(h.abs().max()))
        assert res.labels == gt.labels.tolist()
        kind = res.details["structure"]
        assert kind == ("mixup" if "mixup" in aug else "smoothing") or (kind == "hard" and "mixup" in aug)
        if "label_smoothing" in aug:
            assert res.details["epsilon"] == pytest.approx(aug["label_smoothing"], abs=1e-4)


def test_wang2024_structure_option_and_fedavg_single_step():
    from gradleak.protocols import FedAvg

    sc = Scenario(
        model="mlp",
        model_kwargs={"bias": False},
        dataset="digits",
        image_size=8,
        label_smoothing=0.2,
        seed=3,
        protocol=FedAvg(local_steps=1, local_lr=0.1),
    )
    obs, gt = simulate(sc, dataset=digits())
    res = Wang2024(structure="smoothing").recover(obs)
    assert max_abs_error(res.soft, gt.targets) < 1e-4
    sc5 = Scenario(model="mlp", dataset="digits", image_size=8, label_smoothing=0.2, protocol=FedAvg(local_steps=5))
    with pytest.raises(UnsupportedError, match="5 local steps"):
        Wang2024().recover(simulate(sc5, dataset=digits())[0])


def test_wang2024_refuses_batches():
    obs, _ = observe(2, label_smoothing=0.1)
    with pytest.raises(UnsupportedError, match="one input"):
        Wang2024().recover(obs)
    cond = Wang2024().necessary_condition(obs)
    assert not cond.holds and "one input" in cond.reasons[0]


def test_necessary_condition_flags_a_scale_the_label_structure_cannot_fix():
    # A bias-free head whose rows are equal except the first: every class but 0 gets the same logit for any
    # feature scale, so the smoothed label's equal entries stay equal for every λ and ε is not identifiable.
    torch.manual_seed(0)
    model = MLP(10, (1, 8, 8), bias=False)
    with torch.no_grad():
        model.head.weight[1:] = model.head.weight[1]
    obs, gt = observe(1, seed=0, model=model, label_smoothing=0.1)
    cond = Wang2024().necessary_condition(obs)
    assert not cond.holds
    assert "does not fix the feature scale" in cond.reasons[0]
    with pytest.raises(UnsupportedError, match="necessary condition fails"):
        Wang2024().recover(obs)
    # the same observation with a bias is fine: the bias gradient fixes the scale
    ok, _ = observe(1, seed=0, label_smoothing=0.1)
    assert Wang2024().necessary_condition(ok).holds


def test_triple_scales_invert_the_monotone_ratio():
    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    for lam in (-3.0, 0.2, 7.5):
        p = np.exp(lam * a) / np.exp(lam * a).sum()
        d = lam * (p - 0.01)
        got = triple_scales(a, d, np.arange(8))
        assert np.nanmax(np.abs(got - lam)) < 1e-8 * abs(lam)


# -- scores ----------------------------------------------------------------------------------------------------


def test_soft_scores():
    true = torch.tensor([[0.9, 0.05, 0.05]])
    assert exact_recovery(true + 1e-4, true) == 1.0
    assert exact_recovery(true + 2 * EXACT_TOL, true) == 0.0
    assert max_abs_error(torch.tensor([0.9, 0.1, 0.0]), true) == pytest.approx(0.05)
    obs, gt = observe(1, label_smoothing=0.1)
    s = score_labels(Wang2024().recover(obs), gt.labels.tolist(), gt.targets)
    assert s["label_accuracy"] == 1.0 and s["soft_exact"] == 1.0 and s["soft_max_abs_error"] < 1e-4


def test_cli_labels_runs_every_method(capsys):
    from gradleak.cli import main

    methods = [a for n in ("auto", "idlg", "wang2024", "gradinversion-min", "llg-whitebox") for a in ("--method", n)]
    assert (
        main(
            ["labels", "--model", "mlp", "--data", "digits", "--image-size", "8", "--label-smoothing", "0.1", *methods]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wang2024" in out and "llg-whitebox" in out


def test_min_rule_counts_keeps_the_support_and_counts_the_repeats():
    """The min rule's present classes are exact with repeats (a ReLU before the head), on a fresh and on a
    confident model; the repeats go to present classes, so the variant beats the min rule's distinct labels."""
    obs, gt = observe(8, False, seed=0)  # labels 4, 5, 5, 6, 7, 8, 9, 9
    model = copy.deepcopy(obs.model)
    with torch.no_grad():  # a confident head, as a trained model has
        model.head.weight.mul_(30.0)
        model.head.bias.mul_(30.0)
    x = obs.normalization.normalize(gt.images)
    confident = replace(obs, model=model, update=client_update(model, FedSGD(), x, gt.labels))
    true = gt.labels.tolist()
    for o in (obs, confident):
        res = LABEL_METHODS.get("min-rule-counts")().recover(o)
        assert res.details["present_classes"] == sorted(set(true)) and res.details["repeats"] == 2
        assert len(res.labels) == 8 and set(res.labels) == set(true)
        assert label_accuracy(true, res.labels) > label_accuracy(
            true, LABEL_METHODS.get("gradinversion-min")().recover(o).labels
        )
    assert label_accuracy(true, LABEL_METHODS.get("min-rule-counts")().recover(obs).labels) == 1.0


def test_auto_replaces_a_count_that_leaves_out_a_class_proven_present():
    from gradleak.labels import LabelResult
    from gradleak.labels.auto import presence_checked

    obs, gt = observe(8, False, seed=0)  # labels 4, 5, 5, 6, 7, 8, 9, 9: classes 4..9 show negative entries
    true = sorted(gt.labels.tolist())
    kept, name, _ = presence_checked(obs, LabelResult("ilrg-lsq", true), "ilrg-lsq", "fresh model")
    assert name == "ilrg-lsq" and kept.labels == true
    wrong = [5, 5, 5, 6, 7, 8, 9, 9]  # class 4 left out
    alt, name, why = presence_checked(obs, LabelResult("ilrg-lsq", wrong), "ilrg-lsq", "fresh model")
    assert name == "min-rule-counts" and "[4]" in why and 4 in alt.labels and len(alt.labels) == 8
