import pickle

import pytest
import torch
from torch import nn

from gradleak.errors import InputError, UnknownNameError, UnsafeFileError
from gradleak.models import MODELS, build_model, find_head, load_weights, save_weights


@pytest.mark.parametrize("name", MODELS.names())
def test_every_zoo_model_builds_and_names_its_head(name):
    shape = (3, 32, 32)
    kw = {"width": 8} if name == "convnet" else {}
    model = build_model(name, 7, shape, **kw)
    out = model.eval()(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    head_name, head = find_head(model, 7)
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_convnet_is_the_inverting_gradients_size():
    assert sum(p.numel() for p in build_model("convnet", 10, (3, 32, 32)).parameters()) == 2_904_970


def test_unknown_model_and_factory():
    with pytest.raises(UnknownNameError):
        build_model("nope", 10, (3, 32, 32))
    with pytest.raises(InputError):
        build_model("no_such_module:make", 10, (3, 32, 32))


FACTORY_MODULE = """
from torch import nn

def make(num_classes, input_shape, width=4):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))

def not_a_model(num_classes, input_shape):
    return "model"
"""


def test_user_factory_gets_classes_shape_and_kwargs(tmp_path, monkeypatch):
    (tmp_path / "gradleak_test_user_models.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("gradleak_test_user_models:make", 10, (3, 8, 8), width=6)
    assert model[1].in_features == 3 * 8 * 8 and model[1].out_features == 6
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert find_head(model, 10)[0] == "3"
    with pytest.raises(InputError, match="not an nn.Module"):
        build_model("gradleak_test_user_models:not_a_model", 10, (3, 8, 8))
    with pytest.raises(InputError, match="cannot load"):
        build_model("gradleak_test_user_models:missing", 10, (3, 8, 8))


def test_ambiguous_head_needs_a_name():
    twin = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Linear(10, 10))
    with pytest.raises(InputError, match="head"):
        find_head(twin, 10)
    assert find_head(twin, 10, name="2")[0] == "2"


def test_weights_roundtrip_and_refusals(tmp_path):
    a = build_model("lenet", 10, (3, 16, 16))
    b = build_model("lenet", 10, (3, 16, 16))
    save_weights(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(InputError, match="do not fit"):
        load_weights(build_model("lenet", 5, (3, 16, 16)), tmp_path / "w.safetensors")
    pt = tmp_path / "w.pt"
    pt.write_bytes(pickle.dumps(a.state_dict()))
    with pytest.raises(UnsafeFileError):
        load_weights(b, pt)
