"""Data: bundled real images, loaders for the user's own files, and normalisation (re-exported from
:mod:`gradleak.normalization`).

``load_dataset(spec)`` takes a bundled name (``dataset_names()``; ``photos`` is the default) or a
path to CIFAR python pickles, an image folder ``root/<class>/*.png`` or idx files.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..normalization import Normalization
from .bundled import DATASETS, DEFAULT_DATASET, DEFAULT_SIZE
from .dataset import Dataset
from .loaders import check_image_size, load_cifar, load_idx, load_image_folder, load_path, read_idx, resize_images

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DEFAULT_SIZE",
    "Dataset",
    "Normalization",
    "check_image_size",
    "dataset_available",
    "dataset_names",
    "load_cifar",
    "load_dataset",
    "load_idx",
    "load_image_folder",
    "load_path",
    "read_idx",
    "resize_images",
]


def dataset_names() -> list[str]:
    """Names of the bundled datasets."""
    return DATASETS.names()


def dataset_available(spec: str, *, size: int | None = None) -> bool:
    """Whether :func:`load_dataset` can load ``spec`` here (e.g. ``fashion-mnist`` needs its system package)."""
    try:
        load_dataset(spec, size=size)
    except InputError:
        return False
    return True


def load_dataset(spec: str, *, size: int | None = None) -> Dataset:
    """A bundled dataset by name, or the user's data at a path; images resized to ``size`` if given."""
    check_image_size(size)
    if spec in DATASETS:
        return DATASETS.get(spec)(size=size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"{spec!r} is neither a bundled dataset ({', '.join(dataset_names())}) nor an existing path "
            "(CIFAR python batches, an image folder root/<class>/*.png, or idx files)"
        )
    return load_path(path, size=size)
