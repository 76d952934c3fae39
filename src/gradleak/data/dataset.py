"""The in-memory :class:`Dataset` every loader returns: images in [0, 1], labels, class names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..normalization import Normalization

__all__ = ["Dataset"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set held in memory (compared by identity: it holds tensors).

    ``images`` is float32 ``[N, C, H, W]`` with values in [0, 1]; ``labels`` is int64 ``[N]`` with
    values in ``range(len(classes))``; ``normalization`` is what a model trained on it expects.
    """

    name: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    normalization: Normalization

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        x, y = self.images, self.labels
        if x.dim() != 4 or x.dtype != torch.float32:
            raise InputError(
                f"dataset {self.name!r}: images must be float32 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
            )
        if y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
            raise InputError(
                f"dataset {self.name!r}: labels must be int64 [N] with N={len(x)}, got {y.dtype} {tuple(y.shape)}"
            )
        if len(x) == 0:
            raise InputError(f"dataset {self.name!r} holds no images")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise InputError(
                f"dataset {self.name!r}: labels must lie in [0, {len(self.classes)}), "
                f"got {int(y.min())}..{int(y.max())}"
            )
        if self.normalization.channels != x.shape[1]:
            raise InputError(
                f"dataset {self.name!r}: normalization has {self.normalization.channels} channels, "
                f"images have {x.shape[1]}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Any) -> Dataset:
        """The images selected by ``index`` (int sequence, slice, bool mask or index tensor)."""
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long)
        try:
            images, labels = self.images[index], self.labels[index]
        except (IndexError, TypeError, RuntimeError) as e:
            raise InputError(f"dataset {self.name!r} ({len(self)} images): bad subset index: {e}") from e
        if images.dim() == 3:  # a single integer index
            images, labels = images.unsqueeze(0), labels.unsqueeze(0)
        return Dataset(self.name, images, labels, self.classes, self.normalization)

    def sample(
        self, batch_size: int, *, generator: torch.Generator, unique_labels: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Draw ``batch_size`` distinct images and their labels at random.

        With ``unique_labels`` no two images share a class (at most one image per class).
        """
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if not unique_labels:
            if batch_size > len(self):
                raise InputError(f"batch size {batch_size} exceeds the {len(self)} images of dataset {self.name!r}")
            index = torch.randperm(len(self), generator=generator)[:batch_size]
        else:
            present = torch.unique(self.labels)
            if batch_size > len(present):
                raise InputError(
                    f"batch size {batch_size} with unique labels needs at least {batch_size} classes; "
                    f"dataset {self.name!r} has {len(present)}: lower the batch size or allow repeated labels"
                )
            chosen = present[torch.randperm(len(present), generator=generator)[:batch_size]]
            picks = []
            for c in chosen.tolist():
                members = torch.nonzero(self.labels == c).flatten()
                picks.append(members[torch.randint(len(members), (1,), generator=generator)])
            index = torch.cat(picks)
        return self.images[index].clone(), self.labels[index].clone()
