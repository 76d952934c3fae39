"""Files other people make stay data: loading never imports code or writes files, and every bad file
raises one GradleakError (never another exception)."""

import contextlib
import io
import json
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from gradleak.attacks.matching import MatchingConfig, MatchingProblem, run_matching
from gradleak.data import load_image_folder, load_path
from gradleak.errors import GradleakError, InputError
from gradleak.fl.capture import INDEX_FORMAT, CaptureStore
from gradleak.models import MLP, load_weights
from gradleak.observation import Observation
from gradleak.prior import Generator, GeneratorConfig, load_prior, save_prior
from gradleak.scenario import Scenario, simulate

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from([-1, 0, 10**12, 2**63, 1e308, "ten", "mlp", "logging:basicConfig"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def obs():
    return simulate(
        Scenario(
            model="mlp", model_kwargs={"width": 16, "depth": 1}, dataset="digits", image_size=8, batch_size=2, seed=1
        )
    )[0]


@pytest.fixture(scope="module")
def saved(obs, tmp_path_factory):
    """The observation's header and tensors, as a file holds them."""
    path = obs.save(tmp_path_factory.mktemp("obs") / "o.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["gradleak"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def write(path: Path, header, tensors: dict) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"gradleak": text})
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def load_only_gradleak_errors(fn) -> None:
    """Run ``fn``; it may succeed or raise a GradleakError, nothing else."""
    with contextlib.suppress(GradleakError):
        fn()


# -- observation files never name code -------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("logging:basicConfig", {"filename": "VICTIM", "filemode": "w", "force": True}),
        ("numpy:savez", {"file": "VICTIM"}),
        ("evil_marker_mod:factory", {}),
    ],
)
@pytest.mark.parametrize("fmt", ["gradleak-observation-1", "gradleak-observation-2"])
def test_a_header_naming_code_imports_and_writes_nothing(saved, tmp_path, monkeypatch, name, kwargs, fmt):
    (tmp_path / "evil_marker_mod.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('MARKER').write_text('imported')\n"
        "def factory(**kw):\n    Path(__file__).with_name('CALLED').write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "VICTIM"
    victim.write_text("keep")
    header, tensors = saved
    spec = {"kind": "zoo"} if fmt.endswith("2") else {}
    spec |= {"name": name, "num_classes": header["num_classes"], "input_shape": header["input_shape"], "kwargs": kwargs}
    path = write(tmp_path / "bad.safetensors", {**header, "format": fmt, "model_spec": spec}, tensors)
    before = listing(tmp_path)
    with pytest.raises(InputError, match="never names code"):
        Observation.load(path)
    assert "evil_marker_mod" not in sys.modules
    assert listing(tmp_path) == before and victim.read_text() == "keep"


def test_user_model_files_need_the_model_from_the_caller(obs, tmp_path, monkeypatch):
    user = replace(obs, model_spec=None)
    path = user.save(tmp_path / "u.safetensors")
    with pytest.raises(InputError, match="model_factory"):
        Observation.load(path)
    (tmp_path / "my_models_for_test.py").write_text(
        "from gradleak.models import MLP\n"
        "def make(num_classes, input_shape):\n    return MLP(num_classes, input_shape, width=16, depth=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for back in (
        Observation.load(path, model=MLP(10, (1, 8, 8), width=16, depth=1)),
        Observation.load(path, model_factory=lambda **kw: MLP(**kw, width=16, depth=1)),
        Observation.load(path, model_factory="my_models_for_test:make"),
    ):
        assert back.metadata() == user.metadata()
        assert all(torch.equal(back.update[k], obs.update[k]) for k in obs.update)
    with pytest.raises(InputError, match="another architecture"):
        Observation.load(path, model=MLP(10, (1, 8, 8), width=17, depth=1))


def test_zoo_observation_loads_as_before(obs, tmp_path):
    back = Observation.load(obs.save(tmp_path / "z.safetensors"))
    assert back.metadata()["model_spec"]["kind"] == "zoo" and back.model_spec == obs.model_spec
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), obs.model.state_dict().values()))


# -- regressions: each bad header is one InputError --------------------------------------------------
@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda h: "{not json", "not valid JSON"),
        (lambda h: "[1, 2]", "JSON object"),
        (lambda h: json.dumps(h).replace('"bn_train": false', '"bn_train": NaN'), "not valid JSON"),
        (lambda h: {k: v for k, v in h.items() if k != "model_spec"}, "model_spec: missing"),
        (lambda h: {**h, "num_classes": "ten"}, "num_classes"),
        (lambda h: {**h, "input_shape": [1, 8, 8, 8, 8]}, "input_shape"),
        (lambda h: {**h, "input_shape": [3, 100000, 100000]}, "input_shape"),
        (lambda h: {**h, "batch_size": 0}, "batch_size"),
        (
            lambda h: {**h, "protocol": {"name": "fedavg", "local_steps": 10**9, "local_lr": 0.1, "local_batch": None}},
            "local_steps",
        ),
        (lambda h: {**h, "protocol": {"name": "fedprox"}}, "protocol.name"),
        (lambda h: {**h, "normalization": {"mean": [0.5, 0.5], "std": [0.1, 0.1]}}, "normalization.mean"),
        (lambda h: {**h, "defenses": "clip"}, "defenses"),
        (lambda h: {**h, "model_spec": {**h["model_spec"], "kwargs": {"width": 10**9}}}, "kwargs"),
        (lambda h: {**h, "model_spec": {"kind": "user", "sha256": "0" * 64}}, "user model"),
        (lambda h: {**h, "head": "nonexistent"}, "nonexistent"),
        (lambda h: {**h, "extra": 1}, "unknown field"),
        (lambda h: {**h, "format": "gradleak-observation-9"}, "format"),
        (lambda h: "x" * (2 << 20), "characters"),
    ],
)
def test_bad_headers_are_one_input_error(saved, tmp_path, change, expect):
    header, tensors = saved
    path = write(tmp_path / "bad.safetensors", change(header), tensors)
    with pytest.raises(InputError, match=expect):
        Observation.load(path)


def test_all_header_problems_are_listed_at_once(saved, tmp_path):
    header, tensors = saved
    path = write(
        tmp_path / "bad.safetensors", {**header, "num_classes": "ten", "batch_size": -3, "bn_train": 1}, tensors
    )
    with pytest.raises(InputError) as e:
        Observation.load(path)
    assert [p.split(":")[0] for p in e.value.problems] == ["num_classes", "batch_size", "bn_train", "model_spec"]


def test_nan_and_misshaped_tensors_are_named(saved, tmp_path):
    header, tensors = saved
    nan = dict(tensors)
    nan["update.head.bias"] = torch.full_like(nan["update.head.bias"], float("nan"))
    with pytest.raises(InputError, match="update.head.bias: contains NaN"):
        Observation.load(write(tmp_path / "nan.safetensors", header, nan))
    bad = {**tensors, "update.head.weight": torch.zeros(3, 3), "junk": torch.zeros(1)}
    del bad["state.head.bias"]
    with pytest.raises(InputError) as e:
        Observation.load(write(tmp_path / "shape.safetensors", header, bad))
    assert len(e.value.problems) == 3


@pytest.mark.parametrize("content", [b"", b"not a file", b"\xff" * 8 + b"{}", None])
def test_corrupt_or_missing_files(obs, tmp_path, content):
    path = tmp_path / "c.safetensors"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(InputError):
        Observation.load(path)


def test_truncated_file(obs, tmp_path):
    good = obs.save(tmp_path / "o.safetensors").read_bytes()
    path = tmp_path / "t.safetensors"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError):
        Observation.load(path)


# -- fuzz: only GradleakError, nothing written ------------------------------------------------------
FIELDS = [
    "format",
    "protocol",
    "num_classes",
    "input_shape",
    "batch_size",
    "normalization",
    "defenses",
    "head",
    "model_spec",
    "model_training",
    "bn_train",
    "model_spec.name",
    "model_spec.kwargs",
    "model_spec.kind",
    "model_spec.input_shape",
    "protocol.name",
    "protocol.local_steps",
]


def mutate(header: dict, changes: list) -> dict:
    h = json.loads(json.dumps(header))
    for field, delete, value in changes:
        outer, _, inner = field.partition(".")
        target, key = (h.get(outer), inner) if inner else (h, outer)
        if not isinstance(target, dict):
            continue
        if delete:
            target.pop(key, None)
        else:
            target[key] = value
    return h


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.booleans(), JSON), min_size=1, max_size=3))
def test_fuzz_headers(saved, changes):
    header, tensors = saved
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "f.safetensors", mutate(header, changes), tensors)
        load_only_gradleak_errors(lambda: Observation.load(path))
        assert listing(Path(d)) == ["f.safetensors"]


@FUZZ
@given(st.data())
def test_fuzz_tensors(saved, data):
    header, tensors = saved
    tensors = dict(tensors)
    key = data.draw(st.sampled_from(sorted(tensors)))
    how = data.draw(st.sampled_from(["shape", "nan", "drop", "extra", "dtype"]))
    if how == "shape":
        tensors[key] = torch.zeros(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    elif how == "nan":
        tensors[key] = tensors[key].double().clone().fill_(float(data.draw(st.sampled_from(["nan", "inf"]))))
    elif how == "drop":
        del tensors[key]
    elif how == "extra":
        tensors[data.draw(st.text(min_size=1, max_size=12))] = torch.zeros(2)
    else:
        tensors[key] = tensors[key].to(torch.int32)
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "f.safetensors", header, tensors)
        with pytest.raises(GradleakError):
            Observation.load(path)


@FUZZ
@given(st.data())
def test_fuzz_corrupt_bytes(obs, tmp_path_factory, data):
    good = obs.save(tmp_path_factory.mktemp("bytes") / "o.safetensors").read_bytes()
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, min(len(raw) - 1, 2000)))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.safetensors"
        path.write_bytes(bytes(raw))
        load_only_gradleak_errors(lambda: Observation.load(path))
        assert listing(Path(d)) == ["f.safetensors"]


# -- capture stores ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        JSON, st.lists(JSON, max_size=3).map(lambda c: {"format": INDEX_FORMAT, "latest_round": 1, "captures": c})
    )
)
def test_fuzz_capture_index(index):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "index.json").write_text(json.dumps(index))
        load_only_gradleak_errors(lambda: CaptureStore(d))


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "gradleak-capture-1", "captures": [{"round": "1"}]}'])
def test_corrupt_capture_index(tmp_path, text):
    (tmp_path / "index.json").write_text(text)
    with pytest.raises(InputError):
        CaptureStore(tmp_path)


@pytest.mark.parametrize("rel", ["../outside.safetensors", "/etc/passwd", "round_0001/../../outside.safetensors"])
def test_capture_paths_must_stay_in_the_store(tmp_path, rel):
    root = tmp_path / "store"
    root.mkdir()
    (root / "index.json").write_text(
        json.dumps(
            {
                "format": INDEX_FORMAT,
                "latest_round": 1,
                "captures": [{"round": 1, "client": "a", "path": rel, "bytes": 1}],
            }
        )
    )
    with pytest.raises(InputError, match="relative path inside the store"):
        CaptureStore(root)


def test_capture_symlink_out_of_the_store_is_refused(obs, tmp_path):
    store = CaptureStore(tmp_path / "store")
    entry = store.add(1, "a", obs)
    outside = obs.save(tmp_path / "outside.safetensors")
    (store.root / entry["path"]).unlink()
    os.symlink(outside, store.root / entry["path"])
    with pytest.raises(InputError, match="outside the store"):
        CaptureStore(store.root).load(1, "a")


# -- priors, checkpoints, weights -------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=8, channels=1, z_dim=2, width=2, num_classes=0))
    return save_prior(G, tmp_path_factory.mktemp("prior") / "prior.safetensors", {})


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(
        ["format", "generator", "generator.size", "generator.z_dim", "generator.max_width", "generator.channels"]
    ),
    st.booleans(),
    JSON,
)
def test_fuzz_prior_headers(prior_file, field, delete, value):
    from safetensors import safe_open

    with safe_open(str(prior_file), "pt") as f:
        header, tensors = json.loads(f.metadata()["gradleak"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "p.safetensors", mutate(header, [(field, delete, value)]), tensors)
        load_only_gradleak_errors(lambda: load_prior(path))


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_corrupt_prior(tmp_path, content):
    (tmp_path / "p.safetensors").write_bytes(content)
    with pytest.raises(InputError):
        load_prior(tmp_path / "p.safetensors")


def test_prior_with_huge_recorded_generator_is_refused_before_building(prior_file, tmp_path):
    from safetensors import safe_open

    with safe_open(str(prior_file), "pt") as f:
        header = json.loads(f.metadata()["gradleak"])
    header["generator"]["z_dim"] = 10**9
    with pytest.raises(InputError, match="z_dim"):
        load_prior(write(tmp_path / "p.safetensors", header, {"x": torch.zeros(1)}))


def test_matching_checkpoint_corrupt_or_misshaped(obs, tmp_path):
    cfg = MatchingConfig(iterations=2, checkpoint_every=1)
    ck = tmp_path / "run.safetensors"
    ck.write_bytes(b"corrupt")
    problem = MatchingProblem(obs, torch.tensor([0, 1]), cfg)
    with pytest.raises(InputError, match="cannot read checkpoint"):
        run_matching(problem, batch_size=2, generator=torch.Generator(), checkpoint=ck)
    ck.unlink()
    run_matching(problem, batch_size=2, generator=torch.Generator(), checkpoint=ck)
    from safetensors import safe_open

    with safe_open(str(ck), "pt") as f:
        meta = f.metadata()
    save_file({"var0": torch.zeros(1, 5, 1, 8, 8)}, str(ck), metadata=meta)
    with pytest.raises(InputError, match="var0: shape"):
        run_matching(problem, batch_size=2, generator=torch.Generator(), checkpoint=ck)


def test_weights_mismatches_are_listed(tmp_path):
    model = MLP(10, (1, 8, 8), width=16, depth=1)
    path = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.zeros(3, 3), "extra": torch.zeros(1)}, str(path))
    with pytest.raises(InputError) as e:
        load_weights(model, path)
    assert len(e.value.problems) == 5  # 3 missing, 1 unexpected, 1 wrong shape
    path.write_bytes(b"corrupt")
    with pytest.raises(InputError):
        load_weights(model, path)


# -- images -----------------------------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to claim ``width`` × ``height`` pixels (CRC fixed)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


@pytest.mark.parametrize("sizes", [[(100000, 100000)], [(8000, 8000), (8000, 8000)], [(9000, 9000)]])
def test_image_bombs_and_huge_folders_fail_before_decoding(tmp_path, sizes):
    (tmp_path / "cls").mkdir()
    for i, (w, h) in enumerate(sizes):
        (tmp_path / "cls" / f"{i}.png").write_bytes(png_claiming(w, h))
    with pytest.raises(InputError, match="refusing image|exceed the limit"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("size", [0, 100000, -3])
def test_image_size_bounds(tmp_path, size):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "a.png")
    with pytest.raises(InputError, match="image size"):
        load_path(tmp_path, size=size)
