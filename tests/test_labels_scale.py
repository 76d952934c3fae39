"""Label recovery at scale: iLRG and ilrg-lsq counts with repeats, FedAvg rounds, the ``auto`` choice."""

import copy

import numpy as np
import pytest
import torch

from gradleak.auditing import run_labels
from gradleak.errors import UnsupportedError
from gradleak.labels import LABEL_METHODS, recover_labels
from gradleak.labels.auto import NEAR_UNIFORM, TRAINED_CONFIDENCE, candidates, choose, dummy_confidence
from gradleak.labels.fedavg import recover_rounds
from gradleak.labels.ilrg import ILRG
from gradleak.labels.ilrg_lsq import ILRGLsq
from gradleak.labels.llg import round_counts
from gradleak.metrics import label_accuracy
from gradleak.metrics.labels import max_abs_error
from gradleak.observation import Observation
from gradleak.protocols import FedAvg, FedSGD, client_update
from gradleak.scenario import Scenario, simulate

MLP = dict(model="mlp", model_kwargs={"width": 32, "depth": 1}, dataset="digits", image_size=8)


def _case(**kw):
    return simulate(Scenario(unique_labels=False, **{**MLP, **kw}))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilrg_lsq_counts_exact_with_repeats(seed):
    obs, truth = _case(batch_size=24, seed=seed)  # 24 samples over 10 classes: repeats
    res = ILRGLsq().recover(obs)
    assert len(set(truth.labels.tolist())) < 24
    assert sorted(res.labels) == sorted(truth.labels.tolist())
    assert res.details["rank_condition"]["system_ok"]


def test_ilrg_lsq_rank_condition_holds_and_is_reported_small_batch():
    obs, truth = _case(batch_size=6, seed=3)
    res = ILRGLsq(strict=True).recover(obs)
    rc = res.details["rank_condition"]
    assert rc["holds"] and rc["instance_level"] and rc["gradient_rank"] >= 6
    assert sorted(res.labels) == sorted(truth.labels.tolist())


def test_ilrg_lsq_batchnorm_train_mode():
    obs, truth = simulate(
        Scenario(
            model="convnet",
            model_kwargs={"width": 4},
            dataset="photos",
            batch_size=16,
            unique_labels=False,
            bn_mode="train",
            seed=1,
        )
    )
    assert obs.bn_train
    assert label_accuracy(truth.labels.tolist(), ILRGLsq().recover(obs).labels) == 1.0


def test_ilrg_lsq_without_bias():
    obs, truth = _case(batch_size=5, seed=2, model_kwargs={"width": 32, "depth": 1, "bias": False})
    assert obs.head_grads()[1] is None
    res = ILRGLsq().recover(obs)
    assert "estimated" in res.details["bias_gradient"]
    assert sorted(res.labels) == sorted(truth.labels.tolist())


def test_ilrg_lsq_without_bias_refuses_when_every_class_may_be_present():
    obs, _ = _case(batch_size=12, seed=2, model_kwargs={"width": 32, "depth": 1, "bias": False})
    with pytest.raises(UnsupportedError, match="B < N|batch size \\(12\\) < classes"):
        ILRGLsq().recover(obs)


def _saturated(scale: float):
    """A model that predicts its own batch with probability ≈ 1: the samples leave no gradient."""
    obs, truth = _case(batch_size=12, seed=0)
    model = copy.deepcopy(obs.model)
    x = obs.normalization.normalize(truth.images)
    with torch.no_grad():
        model.head.weight.mul_(scale)
        model.head.bias.mul_(scale)
        y = model(x).argmax(1)
    upd = client_update(model, FedSGD(), x, y)
    return Observation(model=model, update=upd, num_classes=10, input_shape=obs.input_shape, batch_size=12)


def test_ilrg_lsq_refuses_when_rank_condition_fails():
    obs = _saturated(100.0)
    with pytest.raises(UnsupportedError, match="rank"):
        ILRGLsq(strict=True).recover(obs)
    res = ILRGLsq().recover(obs)  # lenient: an answer flagged as approximate
    assert not res.details["rank_condition"]["holds"] and "warning" in res.details


def test_fedavg_labels_three_local_steps():
    for lb in (None, 4):  # full-batch steps; 3 mini-batches of 4 = 1 epoch
        obs, truth = _case(batch_size=12, seed=5, protocol=FedAvg(local_steps=3, local_lr=0.1, local_batch=lb))
        res = LABEL_METHODS.get("fedavg")().recover(obs)
        assert sorted(res.labels) == sorted(truth.labels.tolist())
        assert res.details["even_coverage"] and res.details["lr_source"] == "protocol"


def test_fedavg_labels_with_estimated_lr_and_per_round():
    rounds, truths = [], []
    for r in range(2):
        obs, truth = _case(batch_size=6, seed=10 + r, protocol=FedAvg(local_steps=3, local_lr=0.1))
        rounds.append(obs)
        truths.append(truth)
    results = recover_rounds(rounds, LABEL_METHODS.get("fedavg")(estimate_lr=True))
    for i, (res, truth) in enumerate(zip(results, truths)):
        assert res.details["round"] == i
        assert sorted(res.labels) == sorted(truth.labels.tolist())
        assert res.details["local_lr_estimated"] == pytest.approx(0.1, rel=0.2)


def _confident(obs: Observation) -> Observation:
    """The same round with the head scaled ×100: the model is confident on dummy inputs, as a trained one is."""
    model = copy.deepcopy(obs.model)
    with torch.no_grad():
        model.head.weight.mul_(100.0)
        model.head.bias.mul_(100.0)
    x = torch.rand((obs.batch_size, *obs.input_shape), generator=torch.Generator().manual_seed(0))
    upd = client_update(model, FedSGD(), obs.normalization.normalize(x), torch.arange(obs.batch_size) % 10)
    return Observation(
        model=model,
        update=upd,
        num_classes=10,
        input_shape=obs.input_shape,
        batch_size=obs.batch_size,
        normalization=obs.normalization,
    )


def test_auto_picks_by_what_the_server_sees():
    obs, _ = _case(batch_size=8, seed=0)
    assert dummy_confidence(obs) < TRAINED_CONFIDENCE
    assert choose(obs)[0] == "ilrg-lsq"  # fresh model: the gradient's own estimate of the mean prediction
    trained = _confident(obs)
    assert dummy_confidence(trained) >= TRAINED_CONFIDENCE
    assert choose(trained)[0] == "min-rule-counts"  # confident model, B < N: the min rule's classes + counts
    obs1, _ = _case(batch_size=1, seed=0)
    assert choose(obs1)[0] == "wang2024"
    obsf, _ = _case(batch_size=8, seed=0, protocol=FedAvg(local_steps=2, local_lr=0.05))
    assert choose(obsf)[0] == "fedavg"
    res = recover_labels(obsf)
    assert res.method == "fedavg" and res.details["auto"]["picked"] == "fedavg" and res.details["auto"]["reason"]


def test_auto_confident_model_with_more_samples_than_classes_counts_with_the_support():
    obs, _ = _case(batch_size=16, seed=1)
    assert [name for name, _ in candidates(_confident(obs))][:2] == ["min-rule-counts", "llg-bias-corrected"]


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_returns_soft_labels_only_when_the_label_is_soft(seed):
    obs, truth = _case(batch_size=1, seed=seed, label_smoothing=0.1)
    res = recover_labels(obs)
    assert res.soft is not None and max_abs_error(res.soft, truth.targets) <= 1e-3
    obs, truth = _case(batch_size=1, seed=seed)
    res = recover_labels(obs)
    assert res.soft is None and res.labels == truth.labels.tolist()
    assert "one-hot" in res.details["auto"]["reason"]


def test_published_ilrg_and_the_variant_are_both_registered_and_differ():
    assert {"ilrg", "ilrg-lsq"} <= set(LABEL_METHODS.names())
    obs, truth = _case(batch_size=32, seed=0)  # B ≫ N: class-wise embeddings are off where g_b[c] ≈ 0
    published, variant = ILRG().recover(obs), ILRGLsq().recover(obs)
    assert label_accuracy(truth.labels.tolist(), variant.labels) == 1.0
    assert label_accuracy(truth.labels.tolist(), published.labels) < 0.9
    assert len(published.labels) == 32 and sum(published.details["counts"]) == 32
    nobias, _ = _case(batch_size=5, seed=2, model_kwargs={"width": 32, "depth": 1, "bias": False})
    assert ILRG().problems(nobias) and not ILRGLsq().problems(nobias)


def test_auto_falls_back_when_the_pick_cannot_run():
    obs, _ = _case(batch_size=12, seed=2, model_kwargs={"width": 32, "depth": 1, "bias": False})  # no bias, B ≥ N
    res = recover_labels(obs)
    assert res.method == "llg-whitebox" and any(t["method"] == "ilrg-lsq" for t in res.details["auto"]["skipped"])


def test_audit_reports_the_auto_choice():
    obs, truth = _case(batch_size=8, seed=4)
    section = run_labels(obs, ["auto"], truth)
    chosen = section.chosen
    assert chosen is not None and chosen.requested == "auto" and chosen.result is not None
    assert chosen.result.details["auto"]["picked"] == chosen.method and chosen.accuracy == 1.0
    entry = section.to_json()["methods"][chosen.method]
    assert entry["requested"] == "auto" and entry["label_accuracy"] == 1.0


def test_round_counts_sum_and_nonnegative():
    n = round_counts(np.array([2.6, -0.4, 1.2, 0.7]), 4)
    assert n.sum() == 4 and (n >= 0).all() and n.tolist() == [2, 0, 1, 1]


@pytest.mark.parametrize("bn_mode, expected", [("train", "llg-whitebox"), ("eval", "ilrg-lsq")])
def test_auto_trusts_dummy_inputs_where_batchnorm_normalises_every_batch_alike(bn_mode, expected):
    sc = Scenario(model="resnet18", image_size=16, batch_size=8, seed=0, bn_mode=bn_mode, unique_labels=False)
    obs, _ = simulate(sc)
    assert dummy_confidence(obs) < NEAR_UNIFORM  # a fresh ResNet-18
    assert choose(obs)[0] == expected
