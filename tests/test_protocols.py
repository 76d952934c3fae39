import copy

import pytest
import torch

from gradleak.defenses import LabelSmoothing
from gradleak.errors import InputError
from gradleak.models import build_model
from gradleak.protocols import FedAvg, FedSGD, client_update, cross_entropy


def _batch(seed=0, b=4, shape=(3, 16, 16), n=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g), torch.randint(0, n, (b,), generator=g)


@pytest.mark.parametrize("name", ["convnet", "lenet", "resnet18"])
@pytest.mark.parametrize("train", [True, False])
def test_fedsgd_equals_autograd_gradient(name, train):
    torch.manual_seed(0)
    kw = {"width": 8} if name == "convnet" else {}
    model = build_model(name, 10, (3, 16, 16), **kw).train(train)
    x, y = _batch()
    ref_model = copy.deepcopy(model)
    loss = torch.nn.functional.cross_entropy(ref_model(x), y)
    names, params = zip(*ref_model.named_parameters())
    ref = dict(zip(names, torch.autograd.grad(loss, list(params))))
    upd = client_update(model, FedSGD(), x, y)
    assert set(upd) == set(ref)
    for k in ref:
        torch.testing.assert_close(upd[k], ref[k], rtol=1e-4, atol=1e-6)


def test_soft_targets_match_label_smoothing_loss():
    x, y = _batch()
    logits = torch.randn(4, 10)
    soft = LabelSmoothing(0.1).targets(y, 10)
    ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(cross_entropy(logits, soft), ref)


def test_fedavg_replay_reproduces_local_sgd_delta():
    torch.manual_seed(1)
    model = build_model("lenet", 10, (3, 16, 16))
    x, y = _batch(b=6)
    proto = FedAvg(local_steps=4, local_lr=0.05, local_batch=2)
    # reference: a client running torch.optim.SGD over its mini-batches
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=0.05)
    for sl in proto.batches(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(client(x[sl]), y[sl]).backward()
        opt.step()
    ref = {k: p.detach() - q.detach() for (k, p), q in zip(client.named_parameters(), model.parameters())}
    upd = client_update(model, proto, x, y)
    for k in ref:
        torch.testing.assert_close(upd[k], ref[k], rtol=1e-4, atol=1e-7)
    assert proto.batches(6) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(0, 2)]


def test_fedavg_rejects_bad_settings():
    with pytest.raises(InputError):
        FedAvg(local_steps=0)
    with pytest.raises(InputError):
        FedAvg(local_lr=-1)
