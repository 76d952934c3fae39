"""Loaders for the user's own data on disk; each returns a :class:`Dataset` in [0, 1].

Formats (``load_path`` picks one from what it finds):

- **CIFAR-10/100 python pickles** — a directory holding ``data_batch_*`` / ``test_batch`` (CIFAR-10,
  names from ``batches.meta``) or ``train`` / ``test`` (CIFAR-100, fine labels, names from ``meta``),
  or one such file. A directory yields its test split when present (``test_batch`` / ``test``),
  otherwise every training batch; pass a file to choose. The pickles are read by a restricted
  unpickler that only rebuilds numpy arrays, bytes, lists and dicts, and raises
  :class:`UnsafeFileError` for anything else, so a malicious file cannot run code. Normalisation
  uses the published training-set statistics of CIFAR-10 / CIFAR-100.
- **Image folder** — ``root/<class>/*.png|jpg|jpeg|bmp``; classes are the sorted sub-folder names.
  Images become RGB, or greyscale when every image is grey. Without ``size`` the images keep
  their size when all share one, else they are centre-cropped to a square and resized to 32.
- **idx** — ``*-images-idx3-ubyte[.gz]`` with its ``*-labels-idx1-ubyte[.gz]`` partner (MNIST and
  Fashion-MNIST layout), or a directory holding such a pair (the test pair ``t10k-*`` preferred).

Except for CIFAR, normalisation is the per-channel mean and std of the loaded images.

Sizes are bounded before anything is decoded or allocated: an image size in [1, ``MAX_IMAGE_SIZE``],
``MAX_IMAGE_PIXELS`` per image file (read from its header, so a decompression bomb is refused unread),
``MAX_TOTAL_PIXELS`` in the loaded or resized dataset and ``MAX_IDX_BYTES`` per (decompressed) idx file.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import GradleakError, InputError, UnsafeFileError
from ..normalization import Normalization
from .dataset import Dataset

__all__ = [
    "load_path",
    "load_cifar",
    "load_image_folder",
    "load_idx",
    "read_idx",
    "resize_images",
    "check_image_size",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_SIZE",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_SIZE = 32
MAX_IMAGE_SIZE = 4096
MAX_IMAGE_PIXELS = 1 << 26
MAX_TOTAL_PIXELS = 1 << 26
MAX_IDX_BYTES = 1 << 28

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Training-set statistics (population std), as published and used by e.g. breaching.
CIFAR10_NORMALIZATION = Normalization((0.4914672, 0.4822617, 0.4467701), (0.2470322, 0.2434851, 0.2615879))
CIFAR100_NORMALIZATION = Normalization((0.5071598, 0.4866936, 0.4412019), (0.2673343, 0.2564385, 0.2761505))


# --------------------------------------------------------------------------------------------- utils
def check_image_size(size: int | None) -> None:
    """Raise InputError unless ``size`` is ``None`` or an integer in [1, ``MAX_IMAGE_SIZE``]."""
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE):
        raise InputError(f"image size must be an integer in [1, {MAX_IMAGE_SIZE}], got {size!r}")


def _check_total(n: int, pixels_each: int, where: object) -> None:
    if n * pixels_each > MAX_TOTAL_PIXELS:
        raise InputError(
            f"{where}: {n} images of {pixels_each} pixels exceed the limit of {MAX_TOTAL_PIXELS} pixels "
            "in all; pass a smaller image size (--image-size) or fewer images"
        )


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize ``[N, C, H, W]`` images in [0, 1] to ``size``×``size`` (antialiased bicubic, clamped)."""
    check_image_size(size)
    if tuple(images.shape[-2:]) == (size, size):
        return images
    _check_total(images.shape[0], size * size, "resizing")
    out = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def _dataset(
    name: str, images: Tensor, labels: Tensor, classes: tuple[str, ...], norm: Normalization | None
) -> Dataset:
    images = images.to(torch.float32).contiguous()
    return Dataset(name, images, labels.to(torch.int64), classes, norm or Normalization.from_images(images))


# --------------------------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR pickle holds: numpy arrays, bytes, str, lists, dicts."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        ("builtins", "str"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "int"),
        ("builtins", "float"),
    }

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"refusing to load {self._path}: it references {module}.{name}, which a CIFAR file never needs "
            "(a pickle can run arbitrary code; only load CIFAR files from a source you trust)"
        )


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, path).load()
    except GradleakError:
        raise
    except Exception as e:  # corrupt pickle: many exception types are possible
        raise InputError(f"cannot read {path} as a CIFAR python pickle: {type(e).__name__}: {e}") from e


def _key(d: dict, *names: str) -> Any:
    for n in names:
        for k in (n.encode(), n):
            if k in d:
                return d[k]
    return None


def _decode(names: Any) -> tuple[str, ...]:
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(uint8 [N, 3, 32, 32], int64 [N], is_cifar100)`` from one batch file."""
    d = _unpickle(path)
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a CIFAR batch (a dict with 'data' and 'labels'), got {type(d).__name__}")
    data = _key(d, "data")
    fine = _key(d, "fine_labels")
    labels = fine if fine is not None else _key(d, "labels")
    if data is None or labels is None:
        raise InputError(f"{path}: expected a CIFAR batch with 'data' and 'labels' (or 'fine_labels') entries")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data) or len(data) == 0:
        raise InputError(
            f"{path}: expected CIFAR 'data' of shape [N, 3072] with N labels, got {data.shape} and {labels.shape}"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64), fine is not None


def _cifar_classes(folder: Path, cifar100: bool, num_labels: int) -> tuple[str, ...]:
    meta = folder / ("meta" if cifar100 else "batches.meta")
    if meta.is_file():
        names = _key(_unpickle(meta), "fine_label_names" if cifar100 else "label_names")
        if names is not None:
            return _decode(names)
        log.warning("%s has no label names; using class numbers", meta)
    if not cifar100:
        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(max(100, num_labels)))


def _cifar_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    for names in (["test_batch"], ["test"]):
        found = [path / n for n in names if (path / n).is_file()]
        if found:
            return found
    found = sorted(path.glob("data_batch_*"))
    if not found and (path / "train").is_file():
        found = [path / "train"]
    return found


def load_cifar(path: str | Path, *, size: int | None = None) -> Dataset:
    """A CIFAR-10/100 python-format directory or batch file (see the module docstring)."""
    path = Path(path)
    files = _cifar_files(path)
    if not files:
        raise InputError(f"{path}: expected CIFAR python batches (data_batch_*, test_batch, train or test)")
    parts = [_read_cifar_batch(f) for f in files]
    cifar100 = parts[0][2]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).float().div_(255.0)
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    classes = _cifar_classes(files[0].parent, cifar100, int(labels.max()) + 1)
    if size is not None:
        images = resize_images(images, size)
    norm = CIFAR100_NORMALIZATION if cifar100 else CIFAR10_NORMALIZATION
    log.info("loaded %d CIFAR-%d images from %s", len(images), 100 if cifar100 else 10, path)
    return _dataset(str(path), images, labels, classes, norm)


def _is_cifar_dir(path: Path) -> bool:
    return (
        any(path.glob("data_batch_*"))
        or (path / "test_batch").is_file()
        or ((path / "meta").is_file() and ((path / "train").is_file() or (path / "test").is_file()))
    )


# -------------------------------------------------------------------------------------- image folder
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)


def _open_image(p: Path) -> Image.Image:
    """``Image.open`` that turns decompression bombs and unreadable files into InputError (lazy: no decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"refusing image {p}: {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {p}: {e}") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise InputError(f"refusing image {p}: {w}x{h} pixels exceed the limit of {MAX_IMAGE_PIXELS} per image")
    return img


def _image_size(p: Path) -> tuple[int, int]:
    with _open_image(p) as img:
        return img.size


def _decode_image(p: Path, size: int | None) -> Image.Image:
    """The RGB image at ``p``, centre-cropped and resized to ``size`` if given."""
    try:
        with _open_image(p) as img:
            rgb = img.convert("RGB")
    except OSError as e:  # truncated or corrupt pixel data
        raise InputError(f"cannot read image {p}: {e}") from None
    return rgb if size is None else _square(rgb, size)


def load_image_folder(root: str | Path, *, size: int | None = None) -> Dataset:
    """Images under ``root/<class>/`` (see the module docstring)."""
    root = Path(root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int]] = []
    classes: list[str] = []
    for d in folders:
        members = sorted(p for p in d.iterdir() if _is_image(p))
        if not members:
            log.warning("skipping %s: no %s images", d, "/".join(IMAGE_EXTENSIONS))
            continue
        files += [(p, len(classes)) for p in members]
        classes.append(d.name)
    if not files:
        raise InputError(
            f"{root}: expected an image folder root/<class>/*{'|'.join(IMAGE_EXTENSIONS)}, found no images"
        )
    check_image_size(size)
    sizes = [_image_size(p) for p, _ in files]
    if size is None and len(set(sizes)) > 1:
        log.info("%s: images differ in size; centre-cropping and resizing to %d", root, DEFAULT_SIZE)
        size = DEFAULT_SIZE
    _check_total(len(files), size * size if size is not None else sizes[0][0] * sizes[0][1], root)
    images = [_decode_image(p, size) for p, _ in files]
    arr = np.stack([np.asarray(img) for img in images])  # [N, H, W, 3] uint8
    grey = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    if grey:
        arr = arr[..., :1]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    y = torch.tensor([c for _, c in files], dtype=torch.int64)
    log.info("loaded %d images in %d classes from %s", len(x), len(classes), root)
    return _dataset(str(root), x, y, tuple(classes), None)


# ----------------------------------------------------------------------------------------------- idx
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an idx file (optionally gzip-compressed)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read idx file {path}: {e}") from e
    if len(raw) > MAX_IDX_BYTES:
        raise InputError(f"{path}: idx file larger than {MAX_IDX_BYTES} bytes (decompressed)")
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise InputError(f"{path}: not an idx file (expected the magic bytes 00 00 <type> <ndim>)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise InputError(f"{path}: idx header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise InputError(f"{path}: idx header promises {dims} values of {dtype} but the body holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def _is_idx(p: Path) -> bool:
    return p.is_file() and (p.name.endswith("-ubyte") or p.name.endswith("-ubyte.gz"))


def _idx_partner(path: Path, want: str) -> Path | None:
    """The labels file for an images file (``want="labels"``) or the reverse."""
    base = path.name.removesuffix(".gz")
    if want == "labels":
        swapped = base.replace("images", "labels").replace("idx3", "idx1")
    else:
        swapped = base.replace("labels", "images").replace("idx1", "idx3")
    if swapped == base:
        return None
    for name in (swapped, swapped + ".gz"):
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def _idx_pair(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if _is_idx(p) and "images" in p.name)
        candidates.sort(key=lambda p: not p.name.startswith(("t10k", "test")))
        for candidate in candidates:
            labels = _idx_partner(candidate, "labels")
            if labels is not None:
                return candidate, labels
        raise InputError(f"{path}: expected a pair of *-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz] files")
    if "labels" in path.name:
        images = _idx_partner(path, "images")
        if images is None:
            raise InputError(f"{path}: found no matching *-images-idx3-ubyte[.gz] file beside it")
        return images, path
    labels = _idx_partner(path, "labels")
    if labels is None:
        raise InputError(f"{path}: found no matching *-labels-idx1-ubyte[.gz] file beside it")
    return path, labels


def load_idx(
    path: str | Path, *, size: int | None = None, classes: tuple[str, ...] | None = None, name: str | None = None
) -> Dataset:
    """An idx images/labels pair, given either file or their directory (see the module docstring)."""
    images_path, labels_path = _idx_pair(Path(path))
    arr, labels = read_idx(images_path), read_idx(labels_path)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise InputError(f"{images_path}: expected images [N, H, W] or [N, H, W, C], got shape {arr.shape}")
    if labels.ndim != 1 or len(labels) != len(arr) or len(arr) == 0:
        raise InputError(f"{labels_path}: expected {len(arr)} labels [N], got shape {labels.shape}")
    x = torch.from_numpy(arr.astype(np.float32))
    if arr.dtype == np.uint8:
        x /= 255.0
    elif float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError(f"{images_path}: expected uint8 pixels or floats in [0, 1]")
    if size is not None:
        x = resize_images(x, size)
    y = torch.from_numpy(labels.astype(np.int64))
    if int(y.min()) < 0:
        raise InputError(f"{labels_path}: labels must be non-negative")
    if classes is None:
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    return _dataset(name or str(path), x, y, classes, None)


# --------------------------------------------------------------------------------------------- entry
def load_path(path: str | Path, *, size: int | None = None) -> Dataset:
    """Load the user's data at ``path``: CIFAR pickles, an image folder or idx files."""
    check_image_size(size)
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_file():
        if _is_idx(path):
            return load_idx(path, size=size)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError(f"{path} is a single image; pass its folder laid out as root/<class>/image files")
        return load_cifar(path, size=size)
    if _is_cifar_dir(path):
        return load_cifar(path, size=size)
    if any(_is_idx(p) for p in path.iterdir()):
        return load_idx(path, size=size)
    return load_image_folder(path, size=size)
