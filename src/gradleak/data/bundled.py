"""Real images that ship with the installed libraries, so an audit runs offline out of the box.

Every bundled dataset is square, ``size``×``size`` (default 32), values in [0, 1], and normalised by
the per-channel mean and std of its own images. Nothing is downloaded; loading is deterministic.

``photos`` (default, RGB, 10 classes × 8 = 80 images)
    Colour photos bundled with scikit-image 0.26 (``skimage.data``) and scikit-learn
    (``load_sample_images``). The class is the source photo: astronaut (``astronaut``: NASA portrait
    of Eileen Collins), cat (``chelsea``), coffee (``coffee``), rocket (``rocket``), tissue
    (``immunohistochemistry``), colorwheel (``colorwheel``), motorcycle (``stereo_motorcycle``,
    left view), china (sklearn ``china.jpg``), flower (sklearn ``flower.jpg``) and retina
    (``retina``). Each photo gives 8 square crops, chosen deterministically: candidate squares of
    40–85 % of the short side on a 5×5 grid of positions are scored by how much content they show
    at the target size (pixel std + mean gradient), and the best-scoring ones that overlap earlier
    picks by less than 40 % IoU are kept, so flat sky and black borders are avoided.
``faces`` (grey, 2 classes, 200 images)
    ``skimage.data.lfw_subset()``: 25×25 crops from Labeled Faces in the Wild; the first 100 are
    faces (class ``face``), the last 100 non-face patches (class ``non-face``).
``digits`` (grey, 10 classes ``0``–``9``, 1797 images)
    scikit-learn ``load_digits`` (UCI optical digits): 8×8 images with 16 grey levels, scaled to
    [0, 1]; the label is the written digit.
``fashion-mnist`` (grey, 10 classes, 10000 images)
    The Fashion-MNIST test set (28×28) from the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``), read with the idx loader; Zalando's labels.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..normalization import Normalization
from ..registry import Registry
from .dataset import Dataset
from .loaders import load_idx, resize_images

__all__ = ["DATASETS", "DEFAULT_DATASET", "DEFAULT_SIZE", "FASHION_MNIST_DIRS"]

log = logging.getLogger(__name__)

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
DEFAULT_DATASET = "photos"
DEFAULT_SIZE = 32
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("/usr/local/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

CROPS_PER_PHOTO = 8
_CROP_SCALES = (0.4, 0.55, 0.7, 0.85)
_CROP_GRID = 5
_MAX_IOU = 0.4


def _size(size: int | None) -> int:
    size = DEFAULT_SIZE if size is None else int(size)
    if size < 1:
        raise InputError(f"image size must be positive, got {size}")
    return size


def _make(name: str, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> Dataset:
    images = images.to(torch.float32).contiguous()
    return Dataset(name, images, labels.to(torch.int64), classes, Normalization.from_images(images))


# -------------------------------------------------------------------------------------------- photos
def _photo_sources() -> list[tuple[str, Callable[[], np.ndarray]]]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_image

    return [
        ("astronaut", sk.astronaut),
        ("cat", sk.chelsea),
        ("coffee", sk.coffee),
        ("rocket", sk.rocket),
        ("tissue", sk.immunohistochemistry),
        ("colorwheel", sk.colorwheel),
        ("motorcycle", lambda: sk.stereo_motorcycle()[0]),
        ("china", lambda: load_sample_image("china.jpg")),
        ("flower", lambda: load_sample_image("flower.jpg")),
        ("retina", sk.retina),
    ]


def _content(crop: np.ndarray) -> float:
    """How much a small float crop ``[h, w, 3]`` shows: pixel std plus mean gradient magnitude."""
    grey = crop.mean(axis=2)
    grad = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    return float(crop.std() + grad)


def _iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ax, ay, asz), (bx, by, bsz) = a, b
    w = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    h = max(0, min(ay + asz, by + bsz) - max(ay, by))
    inter = w * h
    return inter / (asz * asz + bsz * bsz - inter)


def _pick_crops(img: Image.Image, probe: int = 32) -> list[tuple[int, int, int]]:
    """Deterministic square boxes ``(left, top, side)`` with the most content (see module docstring)."""
    w, h = img.size
    short = min(w, h)
    boxes = []
    for scale in _CROP_SCALES:
        side = int(round(scale * short))
        for i in range(_CROP_GRID):
            for j in range(_CROP_GRID):
                left = round(i * (w - side) / (_CROP_GRID - 1))
                top = round(j * (h - side) / (_CROP_GRID - 1))
                boxes.append((left, top, side))
    boxes = sorted(set(boxes))
    small = img.resize((max(1, w * 4 * probe // short), max(1, h * 4 * probe // short)), Image.Resampling.BOX)
    f = small.width / w
    scores = []
    for left, top, side in boxes:
        box = (round(left * f), round(top * f), round((left + side) * f), round((top + side) * f))
        crop = np.asarray(small.crop(box).resize((probe, probe), Image.Resampling.BOX), dtype=np.float32) / 255.0
        scores.append(_content(crop))
    chosen: list[tuple[int, int, int]] = []
    for k in np.argsort(-np.asarray(scores), kind="stable"):
        if all(_iou(boxes[k], c) < _MAX_IOU for c in chosen):
            chosen.append(boxes[k])
        if len(chosen) == CROPS_PER_PHOTO:
            break
    return chosen


@functools.lru_cache(maxsize=4)
def _photo_crops(size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    crops, classes = [], []
    for name, load in _photo_sources():
        img = Image.fromarray(np.asarray(load())).convert("RGB")
        for left, top, side in _pick_crops(img):
            crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
            crops.append(np.asarray(crop))
        classes.append(name)
    arr = np.stack(crops)  # [N, size, size, 3] uint8
    arr.flags.writeable = False
    return arr, tuple(classes)


@DATASETS.register("photos")
def photos(size: int | None = None) -> Dataset:
    """Real colour photos, 10 classes × 8 content-rich crops (see the module docstring)."""
    arr, classes = _photo_crops(_size(size))
    images = torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.arange(len(classes)).repeat_interleave(CROPS_PER_PHOTO)
    return _make("photos", images, labels, classes)


# --------------------------------------------------------------------------------------------- faces
@DATASETS.register("faces")
def faces(size: int | None = None) -> Dataset:
    """LFW subset: 100 faces and 100 non-faces, grey (see the module docstring)."""
    import skimage.data as sk

    raw = torch.from_numpy(np.asarray(sk.lfw_subset(), dtype=np.float32)).unsqueeze(1)  # [200, 1, 25, 25]
    images = resize_images(raw.clamp(0.0, 1.0), _size(size))
    half = len(raw) // 2
    labels = torch.cat([torch.zeros(half, dtype=torch.int64), torch.ones(len(raw) - half, dtype=torch.int64)])
    return _make("faces", images, labels, ("face", "non-face"))


# -------------------------------------------------------------------------------------------- digits
@DATASETS.register("digits")
def digits(size: int | None = None) -> Dataset:
    """scikit-learn's 8×8 handwritten digits, grey (see the module docstring)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    images = resize_images(raw, _size(size))
    return _make("digits", images, torch.from_numpy(d.target.astype(np.int64)), tuple(str(i) for i in range(10)))


# ------------------------------------------------------------------------------------- fashion-mnist
def _fashion_dir() -> Path | None:
    for d in FASHION_MNIST_DIRS:
        if any(d.glob("t10k-images-idx3-ubyte*")):
            return d
    return None


@DATASETS.register("fashion-mnist")
def fashion_mnist(size: int | None = None) -> Dataset:
    """The Fashion-MNIST test set from the Debian package (see the module docstring)."""
    folder = _fashion_dir()
    if folder is None:
        raise InputError(
            "Fashion-MNIST is not installed: run `apt-get install dataset-fashion-mnist` "
            f"(it provides {FASHION_MNIST_DIRS[0]}/t10k-images-idx3-ubyte.gz), or choose another dataset"
        )
    images = next(iter(sorted(folder.glob("t10k-images-idx3-ubyte*"))))
    ds = load_idx(images, size=_size(size), classes=FASHION_MNIST_CLASSES, name="fashion-mnist")
    return ds
