"""Client-side defenses (gradleak.guard, gradleak.fl.mods): the model check on received models, the leakage guard
on outgoing updates, and both in Flower — against a test-only malicious server that plants trap-like weights."""

import copy
import importlib.util
import math

import pytest
import torch
from torch import nn

from gradleak.attacks import ImprintRecovery
from gradleak.data import load_dataset
from gradleak.defenses import DPSGD, GaussianNoise
from gradleak.errors import InputError
from gradleak.guard import LeakageGuard, ModelCheckThresholds, model_check
from gradleak.guard.model_check import per_sample_loss
from gradleak.models import build_model
from gradleak.protocols import FedAvg, FedSGD, client_update, cross_entropy
from gradleak.scenario import Scenario
from gradleak.servers import Imprint, ServerStrategy, parse_server, server

needs_flwr = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="Flower is not installed: pip install 'gradleak[flower]'"
)
DIGITS = load_dataset("digits")


def first_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear))


@server("test-isolating-trap")
class IsolatingTrap(ServerStrategy):
    """Test only (trap-like, PAPERS.md §8): the first Linear layer gets random rows and a bias of −2.25 standard
    deviations of a unit's input, so that each unit fires for about one sample of a batch."""

    def modify(self, model, *, input_shape, num_classes, normalization, generator):
        model = copy.deepcopy(model)
        name, layer = first_linear(model)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
            layer.bias.fill_(-2.25)
        return model, {"name": self.name, "layer": name}


def batch(b: int, seed: int = 1):
    images, labels = DIGITS.sample(b, generator=torch.Generator().manual_seed(seed))
    return images, labels, DIGITS.normalization.normalize(images)


def honest(name: str, seed: int, trained: bool, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, DIGITS.num_classes, DIGITS.image_shape, **kw).eval()
    if trained:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(100 + seed)
        for _ in range(5):
            _, y, x = batch(16, int(torch.randint(1 << 30, (1,), generator=g)))
            opt.zero_grad()
            cross_entropy(model(x), y).backward()
            opt.step()
    return model


# -- model check ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("mlp", {"width": 64}), ("lenet", {}), ("cnn6", {}), ("convnet", {"width": 8})])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("trained", [False, True])
def test_model_check_passes_honest_zoo_models(name, kw, seed, trained):
    _, y, x = batch(8, seed)
    result = model_check(honest(name, seed, trained, **kw), x, y)
    assert result.passed, result.summary()
    assert result.value("dsnr") > 0 and result.value("head_rows") == 0.0


def trap_model(seed: int = 0) -> nn.Module:
    model = honest("mlp", 0, False, width=64)
    modified, record = IsolatingTrap().prepare(
        model,
        input_shape=DIGITS.image_shape,
        num_classes=10,
        normalization=None,
        generator=torch.Generator().manual_seed(seed),
    )
    assert record == {"name": "test-isolating-trap", "layer": "body.1"}
    return modified


def test_model_check_flags_trap_weights_by_a_sparse_first_layer():
    _, y, x = batch(8)
    result = model_check(trap_model(), x, y)
    assert "relu_sparsity" in [c.name for c in result.fired]
    assert result.value("relu_sparsity") > 0.9
    assert "relu_sparsity FIRED" in result.summary()
    assert model_check(honest("mlp", 0, False, width=64), x, y).value("relu_sparsity") < 0.6


def test_model_check_flags_one_measurement_binned_as_collinear_rows():
    model = honest("mlp", 0, False, width=64)
    _, layer = first_linear(model)
    with torch.no_grad():  # imprint-like (§7): every unit measures the mean brightness, with staggered biases
        layer.weight.copy_(torch.full_like(layer.weight, 1 / layer.in_features))
        layer.bias.copy_(-torch.linspace(-1.0, 1.0, layer.out_features))
    _, y, x = batch(8)
    result = model_check(model, x, y)
    assert "collinear_rows" in {c.name for c in result.fired}
    assert result.value("collinear_rows") == pytest.approx(1.0)


def test_model_check_flags_class_fishing_in_the_head():
    model = honest("convnet", 0, False, width=8)
    _, y, x = batch(8)
    target = int(y[0])
    with torch.no_grad():  # §9: all rows zero but the target's, every other class's bias 1000
        keep = model.linear.weight[target].clone()
        model.linear.weight.zero_()
        model.linear.weight[target] = 0.5 * keep
        model.linear.bias.fill_(1000.0)
        model.linear.bias[target] = 0.0
    result = model_check(model, x, y)
    assert {"head_rows", "head_bias"} <= {c.name for c in result.fired}
    assert result.value("head_rows") == pytest.approx(0.9) and result.value("head_bias") > 1e3


def test_model_check_flags_a_pass_through_kernel_and_another_architecture():
    model = honest("convnet", 0, False, width=8)
    conv = model.body.conv0
    with torch.no_grad():  # a Dirac kernel copies one pixel forward (SEER's transmit-SNR)
        conv.weight[0].zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    _, y, x = batch(8)
    result = model_check(model, x, y, reference_architecture=honest("convnet", 0, False, width=16))
    fired = {c.name: c for c in result.fired}
    assert set(fired) == {"architecture", "transmit_snr"}
    assert fired["architecture"].value > 0 and "reshaped" in fired["architecture"].where
    same = model_check(model, x, y, reference_architecture=honest("convnet", 1, True, width=8))
    assert same.value("architecture") == 0


def seer_dsnr(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """SEER's formula as its code computes it: per-sample losses of one batched forward pass, one gradient each."""
    model = copy.deepcopy(model)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    losses = per_sample_loss(model(x), y)
    grads = [torch.autograd.grad(losses[i], weights, retain_graph=True) for i in range(len(x))]
    best = 0.0
    for k in range(len(weights)):
        n = torch.stack([g[k].norm() for g in grads]).double()
        best = max(best, float(n.max() / (n.sum() - n.max() + 1e-6)))
    return best


@pytest.mark.parametrize("bn_train", [False, True])
def test_dsnr_is_seers_per_example_gradient_ratio(bn_train):
    _, y, x = batch(8)
    model = honest("convnet", 0, True, width=8).train(bn_train)
    before = copy.deepcopy(model.state_dict())
    assert model_check(model, x, y).value("dsnr") == pytest.approx(seer_dsnr(model, x, y), rel=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # running statistics untouched


@pytest.mark.parametrize(
    "bad", [dict(dsnr=-1.0), dict(transmit_snr=0.0), dict(relu_sparsity=1.5), dict(head_bias=math.nan)]
)
def test_bad_model_check_thresholds_raise(bad):
    with pytest.raises(InputError):
        ModelCheckThresholds(**bad)


def test_model_check_needs_a_batch():
    _, y, x = batch(8)
    with pytest.raises(InputError):
        model_check(honest("mlp", 0, False, width=8), x[:1], y[:1])


# -- leakage guard -------------------------------------------------------------------------------------------------
def mlp_round(b: int, seed: int = 1):
    model = honest("mlp", 0, False, width=64)
    images, y, x = batch(b, seed)
    return model, images, y, client_update(model, FedSGD(), x, y)


def test_guard_blocks_an_update_that_analytic_recovery_inverts():
    model, images, y, update = mlp_round(1)
    decision = LeakageGuard().inspect(
        model, update, protocol=FedSGD(), images=images, targets=y, normalization=DIGITS.normalization
    )
    assert decision.action == "block" and decision.update is None
    assert decision.attempts[0].attacks["analytic_fc"] > 60  # exact: x = ∂L/∂W_n / ∂L/∂b_n
    assert decision.attempts[0].label_accuracy == 1.0 and decision.constant_db < 15


def test_guard_defends_with_the_first_remedy_that_scores_below_the_threshold():
    model, images, y, update = mlp_round(1)
    guard = LeakageGuard(remedies=(GaussianNoise(1e-6), GaussianNoise(1.0)))
    decision = guard.inspect(
        model, update, protocol=FedSGD(), images=images, targets=y, normalization=DIGITS.normalization
    )
    assert decision.action == "defend" and decision.remedy == {"name": "noise", "sigma": 1.0}
    scores = [a.score_db for a in decision.attempts]
    assert scores[1] >= 25 > scores[2]  # 1e-6 is too little noise to change anything, 1.0 is enough
    assert decision.update is not None and not torch.equal(decision.update["body.1.weight"], update["body.1.weight"])


def test_guard_sends_an_update_whose_recovery_stays_low():
    model, images, y, update = mlp_round(16, seed=3)
    decision = LeakageGuard().inspect(
        model, update, protocol=FedSGD(), images=images, targets=y, normalization=DIGITS.normalization
    )
    assert decision.attempts[0].attacks["analytic_fc"] < 25, decision.summary()
    assert decision.action == "send" and decision.update is update
    fedavg = LeakageGuard().inspect(  # analytic_fc refuses a FedAvg delta: nothing scores, the update goes
        model,
        client_update(model, FedAvg(2, 0.1), batch(4)[2], y[:4]),
        protocol=FedAvg(2, 0.1),
        images=images[:4],
        targets=y[:4],
        normalization=DIGITS.normalization,
    )
    assert fedavg.action == "send" and fedavg.score_db is None and "analytic_fc" in fedavg.attempts[0].errors
    assert fedavg.attempts[0].label_accuracy is None  # no attack to feed: the labels were not recovered


@pytest.mark.parametrize("bad", [0.0, -3.0, 101.0, math.inf, math.nan, True])
def test_bad_guard_thresholds_raise(bad):
    with pytest.raises(InputError):
        LeakageGuard(threshold_db=bad)


def test_guard_refuses_a_training_defense_as_remedy():
    with pytest.raises(InputError):
        LeakageGuard(remedies=(DPSGD(noise=1.0),))


# -- Flower --------------------------------------------------------------------------------------------------------
TASK = dict(model="mlp", model_kwargs={"width": 64}, dataset="digits", batch_size=8, seed=0)


def flower_task(**kw):
    from gradleak.fl.task import FlowerTask

    return FlowerTask(scenario=Scenario(**{**TASK, **kw.pop("scenario", {})}), **kw)


def train_message(state: dict, server_round: int = 1):
    import json
    import time

    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, RecordDict

    config = ConfigRecord({"protocol": json.dumps(FedSGD().to_json()), "lr": 0.1, "server-round": server_round})
    meta = Metadata(
        run_id=1,
        message_id=f"m{server_round}",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "config": config}), metadata=meta)


def client_context():
    from flwr.app import Context, RecordDict

    return Context(
        run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(), run_config={}
    )


@needs_flwr
def test_client_app_refuses_to_train_a_trapped_model_and_names_the_check():
    from gradleak.fl.flower import make_client_app

    task = flower_task(model_check=True)
    model = task.initial_model(DIGITS)
    trapped, _ = IsolatingTrap().prepare(
        model,
        input_shape=DIGITS.image_shape,
        num_classes=10,
        normalization=None,
        generator=torch.Generator().manual_seed(0),
    )
    app = make_client_app(task)
    refused = app(train_message(trapped.state_dict()), client_context())
    assert refused.has_error() and "relu_sparsity FIRED" in refused.error.reason
    honest_reply = app(train_message(model.state_dict()), client_context())
    assert not honest_reply.has_error() and set(honest_reply.content.array_records) == {"arrays"}
    unchecked = make_client_app(flower_task())(train_message(trapped.state_dict()), client_context())
    assert not unchecked.has_error()  # without the check the client trains on it


@needs_flwr
def test_guard_mod_blocks_or_replaces_the_reply():
    from gradleak.fl.flower import make_client_app
    from gradleak.fl.task import FlowerTask, update_between

    task = flower_task(scenario={"batch_size": 1}, guard_db=25.0)
    state = task.initial_model(DIGITS).state_dict()
    blocked = make_client_app(task)(train_message(state), client_context())
    assert blocked.has_error() and "-> block" in blocked.error.reason
    defended_task = FlowerTask(scenario=task.scenario, guard_db=25.0, guard_remedies=(GaussianNoise(1.0),))
    defended = make_client_app(defended_task)(train_message(state), client_context())
    plain = make_client_app(flower_task(scenario={"batch_size": 1}))(train_message(state), client_context())
    sent, honest_arrays = (m.content.array_records["arrays"].to_torch_state_dict() for m in (defended, plain))
    names = [k for k, p in task.initial_model(DIGITS).named_parameters()]
    noise = {
        k: v - w
        for (k, v), w in zip(
            update_between(state, sent, names, FedSGD(), 0.1).items(),
            update_between(state, honest_arrays, names, FedSGD(), 0.1).values(),
        )
    }
    assert 0.8 < float(torch.cat([v.flatten() for v in noise.values()]).std()) < 1.2  # σ = 1 noise on the gradient
    assert defended.content.metric_records["metrics"]["num-examples"] == 1


@needs_flwr
def test_task_config_carries_the_clients_protection():
    from gradleak.fl.task import FlowerTask

    task = flower_task(model_check=True, guard_db=22.5, guard_remedies=(GaussianNoise(0.01), GaussianNoise(0.1)))
    cfg = task.to_config()
    assert (cfg["model-check"], cfg["guard"], cfg["guard-remedies"]) == (True, 22.5, "noise:sigma=0.01;noise:sigma=0.1")
    assert FlowerTask.from_config(cfg) == task
    assert FlowerTask.from_config({**cfg, "guard": 0.0, "guard-remedies": ""}).leakage_guard() is None
    for bad in ({"guard": 250.0}, {"guard": -1.0}, {"model-check": "maybe"}, {"guard": 0.0}):
        with pytest.raises(InputError):
            FlowerTask.from_config({**cfg, **bad})


@pytest.fixture(scope="module")
def simulations(tmp_path_factory):
    """One round with 2 checking clients under an honest server, one under the test trap server (Ray: slow)."""
    if importlib.util.find_spec("flwr") is None:
        pytest.skip("Flower is not installed: pip install 'gradleak[flower]'")
    from gradleak.fl.flower import run_simulation

    task = flower_task(model_check=True)
    return {
        kind: run_simulation(
            task,
            num_clients=2,
            num_rounds=1,
            capture_dir=tmp_path_factory.mktemp(kind),
            num_cpus=2,
            server=parse_server(kind if kind == "honest" else "test-isolating-trap"),
        )
        for kind in ("honest", "malicious")
    }


@pytest.mark.slow
@needs_flwr
def test_model_check_fires_only_under_the_malicious_server(simulations):
    honest_store, malicious_store = simulations["honest"], simulations["malicious"]
    assert len(honest_store.captured()) == 2
    assert not any("skipped" in e for e in honest_store.entries.values())
    assert malicious_store.captured() == []
    refusals = [e["skipped"] for e in malicious_store.entries.values()]
    assert len(refusals) == 2 and all("client error" in r and "relu_sparsity FIRED" in r for r in refusals)


def test_guard_finds_an_imprint_block_without_the_servers_record():
    model = honest("mlp", 0, False, width=64)
    sent, _ = Imprint(bins=64).prepare(
        model,
        input_shape=DIGITS.image_shape,
        num_classes=DIGITS.num_classes,
        normalization=DIGITS.normalization,
        generator=torch.Generator().manual_seed(0),
    )
    images, y, x = batch(16, seed=3)
    update = client_update(sent, FedSGD(), x, y)
    guard = LeakageGuard(attacks=(ImprintRecovery(),))
    decision = guard.inspect(  # the client does not pass the server's record: it has none
        sent, update, protocol=FedSGD(), images=images, targets=y, normalization=DIGITS.normalization
    )
    assert decision.attempts[0].attacks["imprint"] > 60 and decision.action == "block"  # exact, block found
    honest_round = guard.inspect(
        model,
        client_update(model, FedSGD(), x, y),
        protocol=FedSGD(),
        images=images,
        targets=y,
        normalization=DIGITS.normalization,
    )
    assert honest_round.action == "send" and "not parallel" in honest_round.attempts[0].errors["imprint"]
