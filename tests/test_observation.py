import pickle

import pytest
import torch

from gradleak.errors import InputError, UnsafeFileError
from gradleak.observation import Observation
from gradleak.protocols import FedAvg
from gradleak.scenario import Scenario, simulate


@pytest.fixture(scope="module")
def obs():
    return simulate(Scenario(model="lenet", dataset="digits", image_size=16, batch_size=2, seed=3))[0]


def test_save_load_roundtrip(obs, tmp_path):
    path = obs.save(tmp_path / "o.safetensors")
    back = Observation.load(path)
    assert back.metadata() == obs.metadata()
    for k in obs.update:
        assert torch.equal(back.update[k], obs.update[k])
    for (k, a), (_, b) in zip(obs.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_fedavg_protocol_survives_save(tmp_path):
    o, _ = simulate(
        Scenario(
            model="mlp",
            dataset="digits",
            image_size=8,
            batch_size=2,
            protocol=FedAvg(local_steps=3, local_lr=0.1, local_batch=1),
        )
    )
    back = Observation.load(o.save(tmp_path / "f.safetensors"))
    assert back.protocol == o.protocol and back.kind == "delta"


def test_wrong_shape_nan_and_missing_are_all_reported(obs):
    upd = dict(obs.update)
    k0, k1, k2 = list(upd)[:3]
    upd[k0] = torch.zeros(3, 3)
    upd[k1] = upd[k1].clone()
    upd[k1].view(-1)[0] = float("nan")
    del upd[k2]
    with pytest.raises(InputError) as e:
        obs.with_update(upd)
    msg = str(e.value)
    assert k0 in msg and "NaN" in msg and "lacks" in msg


def test_a_finite_update_whose_sum_overflows_is_accepted_and_inf_is_not(obs):
    upd = dict(obs.update)
    k = next(iter(upd))
    upd[k] = torch.full_like(upd[k], 3e38)  # every entry finite, their float32 sum is inf
    assert torch.equal(obs.with_update(upd).update[k], upd[k])
    upd[k] = upd[k].clone()
    upd[k].view(-1)[-1] = float("-inf")
    with pytest.raises(InputError, match="NaN or inf"):
        obs.with_update(upd)


def test_pickle_and_foreign_files_are_refused(obs, tmp_path):
    p = tmp_path / "obs.pt"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFileError):
        Observation.load(p)
    from safetensors.torch import save_file

    q = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(q))
    with pytest.raises(InputError, match="not a gradleak observation"):
        Observation.load(q)
    r = tmp_path / "garbage.safetensors"
    r.write_bytes(b"not a file")
    with pytest.raises(InputError):
        Observation.load(r)


def test_head_found_by_name(obs):
    assert obs.head == "fc"
    w, b = obs.head_grads()
    assert w.shape == (obs.num_classes, obs.model.fc.in_features) and b.shape == (obs.num_classes,)
