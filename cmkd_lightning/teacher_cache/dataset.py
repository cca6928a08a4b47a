"""A training set that draws one of the 162 enumerated views per sample and says which one it drew."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cmkd_lightning.errors import IndexOutOfRangeError, InvalidArgumentError
from cmkd_lightning.teacher_cache.views import IDENTITY_VIEW, NUM_VIEWS, render_views


class ViewIndexedDataset(Dataset):
    """``(image, target, sample_index, view_index)`` with the image rendered from exactly that view.

    With ``augment=True`` the view is drawn uniformly from the 162 views with torch's global generator (as
    torchvision's RandomCrop and RandomHorizontalFlip draw theirs, so seeding and DataLoader workers behave the same);
    the resulting distribution of training inputs is that of RandomCrop(32, padding=4) + RandomHorizontalFlip.
    With ``augment=False`` every sample is the identity view (the image itself).

    Args:
        images: ``(N, 32, 32, 3)`` uint8 images.
        targets: ``N`` labels.
        mean: per-channel mean of the normalisation.
        std: per-channel std of the normalisation.
        augment: draw a random view per sample (else the identity view).

    Example:
        >>> ds = ViewIndexedDataset(np.zeros((3, 32, 32, 3), np.uint8), [0, 1, 2], (0.5,) * 3, (0.25,) * 3)
        >>> x, y, index, view = ds[2]
        >>> tuple(x.shape), y, index, 0 <= view < 162
        ((3, 32, 32), 2, 2, True)
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = True,
    ) -> None:
        if len(images) != len(targets):
            raise InvalidArgumentError(f"Expected one target per image ({len(images)}), but got {len(targets)}.")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.targets = [int(t) for t in targets]
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int]:
        if not 0 <= index < len(self.targets):
            raise IndexOutOfRangeError(f"Expected an index in [0, {len(self.targets)}), but got {index}.")
        view = int(torch.randint(NUM_VIEWS, ())) if self.augment else IDENTITY_VIEW
        x = render_views(self.images[index : index + 1], [view], self.mean, self.std)[0]
        return x, self.targets[index], int(index), view


__all__ = ["ViewIndexedDataset"]
