"""gradleak.data: normalisation, bundled datasets, and loaders on files written here."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.data import Dataset, Normalization, bundled, dataset_names, load_dataset, load_path, read_idx
from gradleak.errors import GradleakError, InputError, UnknownNameError, UnsafeFileError


# ------------------------------------------------------------------------------------ normalization
def test_normalization_round_trip_and_bounds():
    norm = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    z = norm.normalize(x)
    assert torch.allclose(z[:, 1], (x[:, 1] - 0.4) / 0.25)
    assert torch.allclose(norm.denormalize(z), x, atol=1e-6)
    lo, hi = norm.bounds()
    assert lo.shape == hi.shape == (3, 1, 1)
    assert torch.allclose(lo.flatten(), torch.tensor([-2.5, -1.6, -0.6]))
    assert torch.allclose(hi.flatten(), torch.tensor([2.5, 2.4, 1.4]))
    assert Normalization.from_json(norm.to_json()) == norm
    # works on a single image [C, H, W] too
    assert norm.normalize(x[0]).shape == (3, 4, 4)


def test_normalization_from_images_and_errors():
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 1.0)])
    norm = Normalization.from_images(x)
    assert norm.mean == pytest.approx((0.5,)) and norm.std == pytest.approx((0.5,))
    with pytest.raises(InputError):
        Normalization((0.5, 0.5), (0.2,))
    with pytest.raises(InputError):
        Normalization((0.5,), (0.0,))
    with pytest.raises(InputError, match="3-channel"):
        Normalization((0.5,) * 3, (0.2,) * 3).normalize(torch.zeros(1, 1, 4, 4))
    with pytest.raises(InputError):
        Normalization.from_json({"mean": [0.1]})


# ---------------------------------------------------------------------------------------- bundled
def _check(ds: Dataset, n: int, shape: tuple[int, int, int], classes: int) -> None:
    assert len(ds) == n and ds.image_shape == shape and ds.num_classes == classes
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert ds.normalization.channels == shape[0]


def test_bundled_names():
    assert {"photos", "faces", "digits", "fashion-mnist"} <= set(dataset_names())
    assert bundled.DEFAULT_DATASET in dataset_names()


def test_photos_default_and_64():
    ds = load_dataset("photos")
    _check(ds, 80, (3, 32, 32), 10)
    assert ds.classes[:3] == ("astronaut", "cat", "coffee")
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 8))
    # every crop shows content: no flat patches
    assert float(ds.images.flatten(1).std(dim=1).min()) > 0.05
    again = load_dataset("photos")
    assert torch.equal(ds.images, again.images)  # deterministic
    ds.images.zero_()  # a caller mutating its copy does not poison the cache
    assert torch.equal(load_dataset("photos").images, again.images)
    _check(load_dataset("photos", size=64), 80, (3, 64, 64), 10)


def test_faces_and_digits():
    faces = load_dataset("faces")
    _check(faces, 200, (1, 32, 32), 2)
    assert faces.classes == ("face", "non-face")
    assert faces.labels[:100].eq(0).all() and faces.labels[100:].eq(1).all()
    digits = load_dataset("digits", size=16)
    _check(digits, 1797, (1, 16, 16), 10)
    assert digits.classes == tuple(str(i) for i in range(10))


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "FASHION_MNIST_DIRS", (tmp_path,))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(bundled._fashion_dir() is None, reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_installed():
    ds = load_dataset("fashion-mnist")
    _check(ds, 10000, (1, 32, 32), 10)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 1000))


def test_unknown_spec():
    with pytest.raises(InputError, match="neither a bundled dataset"):
        load_dataset("no-such-dataset")


# ---------------------------------------------------------------------------------------- Dataset
def _toy(n: int = 12, classes: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.arange(n) % classes
    return Dataset("toy", x, y, tuple("abcd"[:classes]), Normalization.identity(1))


def test_sample_is_reproducible_and_unique():
    ds = _toy()
    a = ds.sample(5, generator=torch.Generator().manual_seed(3))
    b = ds.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len({tuple(img.flatten().tolist()) for img in a[0]}) == 5  # without replacement
    for seed in range(5):
        _, y = ds.sample(4, generator=torch.Generator().manual_seed(seed), unique_labels=True)
        assert sorted(y.tolist()) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="unique labels"):
        ds.sample(5, generator=torch.Generator(), unique_labels=True)
    with pytest.raises(InputError):
        ds.sample(13, generator=torch.Generator())
    with pytest.raises(InputError):
        ds.sample(0, generator=torch.Generator())


def test_subset_and_validation():
    ds = _toy()
    sub = ds.subset([0, 5, 6])
    assert len(sub) == 3 and sub.labels.tolist() == [0, 1, 2] and sub.classes == ds.classes
    assert len(ds.subset(ds.labels == 1)) == 3
    assert len(ds.subset(slice(0, 2))) == 2 and len(ds.subset(4)) == 1
    with pytest.raises(InputError):
        ds.subset([99])
    with pytest.raises(InputError):
        Dataset("bad", torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), ("a", "b"), Normalization.identity(1))
    with pytest.raises(InputError):
        Dataset("bad", torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ("a", "b"), Normalization.identity(3))


# ------------------------------------------------------------------------------------------ CIFAR
def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _write_pickle(path, obj, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.fixture
def cifar10_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for k, protocol in ((1, 2), (2, 4)):
        imgs = _cifar_images(6, k)
        _write_pickle(
            root / f"data_batch_{k}",
            {
                b"batch_label": f"training batch {k} of 2".encode(),
                b"labels": [int(i) for i in np.arange(6) % 10],
                b"data": imgs.reshape(6, -1),
                b"filenames": [f"img{i}.png".encode() for i in range(6)],
            },
            protocol,
        )
    test = _cifar_images(5, 9)
    _write_pickle(root / "test_batch", {b"labels": [9, 8, 7, 6, 5], b"data": test.reshape(5, -1)}, 5)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return root, test


def test_cifar10_directory_and_file(cifar10_dir):
    root, test = cifar10_dir
    ds = load_dataset(str(root))  # the test split
    assert len(ds) == 5 and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.classes[9] == "truck" and ds.labels.tolist() == [9, 8, 7, 6, 5]
    # official layout: row = 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane
    assert torch.equal((ds.images * 255).round().to(torch.uint8), torch.from_numpy(test))
    assert ds.normalization.mean[0] == pytest.approx(0.4914, abs=1e-3)
    batch = load_path(root / "data_batch_2", size=16)
    assert len(batch) == 6 and batch.image_shape == (3, 16, 16) and batch.classes[0] == "airplane"


def test_cifar10_training_batches_without_test(cifar10_dir):
    root, _ = cifar10_dir
    (root / "test_batch").unlink()
    ds = load_dataset(str(root))
    assert len(ds) == 12


def test_cifar100(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    imgs = _cifar_images(4, 3)
    _write_pickle(
        root / "test", {b"fine_labels": [0, 99, 42, 7], b"coarse_labels": [0, 1, 2, 3], b"data": imgs.reshape(4, -1)}
    )
    _write_pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    ds = load_dataset(str(root))
    assert ds.num_classes == 100 and ds.labels.tolist() == [0, 99, 42, 7] and ds.classes[99] == "c99"
    assert ds.normalization.mean[0] == pytest.approx(0.5071, abs=1e-3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    marker = tmp_path / "pwned"
    _write_pickle(root / "test_batch", {b"data": _Evil(marker), b"labels": [0]})
    with pytest.raises(UnsafeFileError, match="os|posix|nt"):
        load_dataset(str(root))
    assert not marker.exists()


def test_corrupt_cifar(tmp_path):
    bad = tmp_path / "test_batch"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(InputError, match="test_batch"):
        load_path(bad)
    _write_pickle(bad, {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    with pytest.raises(InputError, match="3072"):
        load_path(bad)


# ----------------------------------------------------------------------------------- image folder
def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_rgb_same_size(tmp_path):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    _png(tmp_path / "cats" / "a.png", first)
    _png(tmp_path / "cats" / "b.PNG", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    _png(tmp_path / "dogs" / "c.bmp", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ("cats", "dogs") and ds.labels.tolist() == [0, 0, 1]
    assert ds.image_shape == (3, 20, 24)  # kept: all the same size
    assert torch.equal((ds.images[0] * 255).round().to(torch.uint8), torch.from_numpy(first).permute(2, 0, 1))
    assert load_dataset(str(tmp_path), size=8).image_shape == (3, 8, 8)


def test_image_folder_grey_mixed_sizes(tmp_path):
    _png(tmp_path / "a" / "1.png", np.full((40, 30), 100, np.uint8))
    _png(tmp_path / "b" / "2.jpg", np.full((20, 20), 200, np.uint8))
    ds = load_path(tmp_path)
    assert ds.image_shape == (1, 32, 32)
    assert float(ds.images[1].mean()) == pytest.approx(200 / 255, abs=0.01)


def test_image_folder_errors(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="found no images"):
        load_path(tmp_path)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        load_path(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_path(tmp_path / "missing")


# -------------------------------------------------------------------------------------------- idx
def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_pair(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 0, 1], np.uint8)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)
    assert np.array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}"), images)
    for spec in (tmp_path, tmp_path / f"t10k-images-idx3-ubyte{suffix}", tmp_path / f"t10k-labels-idx1-ubyte{suffix}"):
        ds = load_dataset(str(spec))
        assert len(ds) == 7 and ds.image_shape == (1, 28, 28) and ds.num_classes == 5
        assert ds.labels.tolist() == labels.tolist()
        assert torch.equal((ds.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))
    assert load_path(tmp_path, size=32).image_shape == (1, 32, 32)


def test_idx_errors(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte"
    _idx(images, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="labels"):
        load_path(images)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(InputError, match="expected 3 labels"):
        load_path(images)
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(InputError, match="body"):
        load_path(images)
    images.write_bytes(b"garbage!")
    with pytest.raises(InputError, match="not an idx file"):
        read_idx(images)


def test_errors_are_one_family():
    assert issubclass(UnsafeFileError, GradleakError) and issubclass(UnknownNameError, GradleakError)


def test_dataset_available_says_whether_a_dataset_loads(tmp_path):
    from gradleak.data import dataset_available

    assert dataset_available("digits", size=8)
    assert not dataset_available(str(tmp_path / "no-such-folder"))
