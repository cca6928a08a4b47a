"""CRD's sample indices: each training sample with its dataset index and contrast indices (positive, negatives)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cmkd_lightning.errors import InvalidArgumentError


class ContrastiveSampleDataset(Dataset):
    """Wrap a labelled dataset so that item ``i`` is ``(image, target, i, contrast_index)`` (CRD's "exact" mode).

    ``contrast_index`` is ``[i, j_1, ..., j_K]``: the sample itself, then ``K`` samples of other classes drawn
    uniformly (without replacement when the other classes hold at least ``K`` samples), as the reference's
    ``CIFAR100InstanceSample`` does. Each worker draws from its own generator, seeded from PyTorch's per-worker seed.

    Args:
        dataset: yields ``(image, target, ...)``.
        targets: the class of every sample, in order.
        num_negatives: ``K`` (the reference's 16,384).

    Example:
        >>> data = ContrastiveSampleDataset([(torch.zeros(1), y) for y in [0, 0, 1, 1, 2]], [0, 0, 1, 1, 2], 2)
        >>> image, target, index, contrast = data[4]
        >>> index, contrast[0].item(), sorted(set(contrast[1:].tolist()) & {4})
        (4, 4, [])
    """

    def __init__(self, dataset: Any, targets: Sequence[int], num_negatives: int) -> None:
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise InvalidArgumentError(f"Expected `num_negatives` to be a positive integer, but got {num_negatives!r}.")
        labels = np.asarray([int(t) for t in targets])
        if len(labels) != len(dataset):
            raise InvalidArgumentError(
                f"Expected one target per sample ({len(dataset)}), but got {len(labels)} targets."
            )
        self.dataset, self.num_negatives = dataset, num_negatives
        self.labels = labels
        self.others = {int(c): np.flatnonzero(labels != c) for c in np.unique(labels)}
        if any(len(v) == 0 for v in self.others.values()):
            raise InvalidArgumentError(
                "Expected at least two classes in the training set for CRD's negatives, but got one."
            )
        self._rng: np.random.Generator | None = None
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int, torch.Tensor]:
        seed = torch.initial_seed()
        if self._rng is None or self._seed != seed:
            self._rng, self._seed = np.random.default_rng(seed % 2**63), seed
        item = self.dataset[index]
        others = self.others[int(self.labels[index])]
        negatives = self._rng.choice(others, self.num_negatives, replace=self.num_negatives > len(others))
        contrast = torch.from_numpy(np.concatenate([[index], negatives]).astype(np.int64))
        return item[0], item[1], index, contrast


def check_negatives(value: Any, teacher_cache: Any = None) -> int | None:
    """``contrastive_negatives`` of a data module: ``None`` or a positive integer, not with a teacher cache."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(
            f"Expected `contrastive_negatives` to be a positive integer or None, but got {value!r}."
        )
    if value is not None and teacher_cache is not None:
        raise InvalidArgumentError("Expected `contrastive_negatives` (CRD) or `teacher_cache`, but got both.")
    return value


def with_contrast(train_set: Any, num_negatives: int | None) -> Any:
    """``train_set`` wrapped in :class:`ContrastiveSampleDataset` when ``num_negatives`` is set (once)."""
    if num_negatives is None or train_set is None or isinstance(train_set, ContrastiveSampleDataset):
        return train_set
    return ContrastiveSampleDataset(train_set, train_set.targets, num_negatives)
