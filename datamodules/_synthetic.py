"""Synthetic stand-ins for image datasets: the same shapes, classes, dtypes and transforms, no files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cmkd_lightning.errors import IndexOutOfRangeError


class SyntheticImageDataset(Dataset):
    """Deterministic random ``uint8`` images as PIL images, passed through the real dataset's transform.

    Image ``i`` is drawn from a generator seeded with ``(seed, i)``, so every worker, epoch and DDP rank sees the
    same image for the same index; its label is ``i % num_classes`` (every class present, balanced). Images are
    made on demand, so a long dataset costs no memory. Meant for smoke tests and device checks, not for accuracy.

    Args:
        length: number of samples.
        num_classes: number of classes.
        height: image height before the transform.
        width: image width before the transform.
        channels: 3 for RGB, 1 for grayscale.
        transform: applied to the PIL image, as the real dataset does.
        seed: seed of the pixel values.

    Example:
        >>> ds = SyntheticImageDataset(4, num_classes=3, height=32, width=32)
        >>> image, label = ds[3]
        >>> image.size, label
        ((32, 32), 0)
    """

    def __init__(
        self,
        length: int,
        num_classes: int,
        height: int,
        width: int,
        channels: int = 3,
        transform: Callable | None = None,
        seed: int = 0,
    ) -> None:
        self.length, self.num_classes = length, num_classes
        self.shape = (height, width, channels) if channels > 1 else (height, width)
        self.transform = transform
        self.seed = seed
        self.targets = [i % num_classes for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.length:
            raise IndexOutOfRangeError(f"Expected an index in [0, {self.length}), but got {index}.")
        rng = np.random.default_rng((self.seed, index))
        image = Image.fromarray(rng.integers(0, 256, self.shape, dtype=np.uint8))
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


__all__ = ["SyntheticImageDataset"]
