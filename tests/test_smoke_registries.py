"""Every registered attack, label method and defense runs on a tiny observation (a new one is covered
automatically): each method runs on at least one small scenario, refuses the others with its reasons, and
returns a well-formed result."""

import dataclasses
import functools
import importlib.util

import pytest
import torch

from gradleak.attacks import ATTACKS
from gradleak.defenses import DEFENSES, parse_defense
from gradleak.errors import UnsupportedError
from gradleak.labels import LABEL_METHODS
from gradleak.prior import Generator, GeneratorConfig, save_prior
from gradleak.protocols import FedAvg
from gradleak.scenario import Scenario, simulate
from gradleak.servers import Fishing, Imprint, TrapWeights

DIGITS = {"dataset": "digits", "image_size": 8, "seed": 0}
# small scenarios, tried in this order; each method runs on the first one it supports
SCENARIOS = {
    "fedsgd-mlp-b1": Scenario(model="mlp", model_kwargs={"width": 32}, batch_size=1, **DIGITS),
    "fedsgd-mlp-b2": Scenario(model="mlp", model_kwargs={"width": 32}, batch_size=2, **DIGITS),
    "fedsgd-cnn6-b1": Scenario(model="cnn6", batch_size=1, **DIGITS),  # invertible layers
    "fedsgd-twolayer-b2": Scenario(model="twolayer", model_kwargs={"width": 2000}, batch_size=2, **DIGITS),
    "fedavg-mlp-b2": Scenario(
        model="mlp", model_kwargs={"width": 32}, batch_size=2, protocol=FedAvg(local_steps=2, local_lr=0.1), **DIGITS
    ),
    "imprint-mlp-b2": Scenario(model="mlp", model_kwargs={"width": 32}, batch_size=2, server=Imprint(bins=8), **DIGITS),
    "trap-mlp-b2": Scenario(model="mlp", model_kwargs={"width": 32}, batch_size=2, server=TrapWeights(), **DIGITS),
    "fishing-mlp-b1": Scenario(  # class fishing on the one sample's class (6 at this seed): a fished count of 1
        model="mlp", model_kwargs={"width": 32}, batch_size=1, server=Fishing(target=6), **DIGITS
    ),
}
# settings that keep an iterative attack to a few steps (set only where its config has the field)
FEW_STEPS = {"iterations": 3, "restarts": 1, "warmup": 0, "log_every": 1, "refine_steps": 5, "trials": 2}
# a valid spec for defenses whose single value is not a fraction in (0, 1]
DEFENSE_SPECS = {"quantize": "quantize:4", "dpsgd": "dpsgd:noise=1,clip=1"}
HAS_OPACUS = importlib.util.find_spec("opacus") is not None


@functools.cache
def observe(scenario: str):
    return simulate(SCENARIOS[scenario])[0]


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """An untrained 8×8 prior: enough to run the generative attacks' code paths."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=8, channels=1, z_dim=4, width=4, num_classes=10))
    return str(save_prior(G, tmp_path_factory.mktemp("prior") / "prior.safetensors"))


def first_supported(run):
    """``(scenario, observation, result)`` of the first scenario ``run(obs)`` does not refuse."""
    refusals = {}
    for name in SCENARIOS:
        obs = observe(name)
        try:
            return name, obs, run(obs)
        except UnsupportedError as e:
            assert e.problems, f"{e.method} refused {name} without saying why"
            refusals[name] = e.problems
    pytest.fail(f"refused every smoke scenario: {refusals}")


def check_labels(labels, obs):
    assert len(labels) == obs.batch_size
    assert all(isinstance(k, int) and 0 <= k < obs.num_classes for k in labels)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_runs_on_a_tiny_observation(name, prior):
    cls = ATTACKS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = {k: v for k, v in {**FEW_STEPS, "prior": prior}.items() if k in fields}

    def run(obs):
        attack = cls(**overrides)
        attack.check(obs)
        return attack.run(obs, generator=torch.Generator().manual_seed(0))

    _, obs, res = first_supported(run)
    assert res.name == name
    assert res.images.shape == (obs.batch_size, *obs.input_shape)
    assert torch.isfinite(res.images).all()
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    if res.labels is not None:
        check_labels(res.labels, obs)


@pytest.mark.parametrize("name", LABEL_METHODS.names())
def test_every_label_method_runs_on_a_tiny_observation(name):
    _, obs, res = first_supported(lambda obs: LABEL_METHODS.get(name)().recover(obs))
    check_labels(res.labels, obs)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_runs_in_a_tiny_scenario(name):
    if name in ("dpsgd", "dpfedavg") and not HAS_OPACUS:
        pytest.skip("the DP defenses need the dp extra: pip install 'gradleak[dp]'")
    defense = parse_defense(DEFENSE_SPECS.get(name, f"{name}:0.5"))
    assert type(defense) is DEFENSES.get(name)
    sc = dataclasses.replace(SCENARIOS["fedsgd-mlp-b2"], defenses=(defense,))
    obs = simulate(sc)[0]
    assert [d["name"] for d in obs.defenses] == [name]
    params = dict(obs.model.named_parameters())
    assert set(obs.update) == set(params)
    for k, v in obs.update.items():
        assert v.shape == params[k].shape and torch.isfinite(v).all(), k
