"""A shuffling sampler whose order depends only on (seed, epoch), so resumed runs see the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` drawn from ``seed + epoch``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (as for ``DistributedSampler``), so
    epoch ``e`` always yields the same order: a run resumed from a checkpoint at epoch ``e`` sees exactly the
    batches an uninterrupted run sees, which a sampler holding one running generator cannot guarantee.

    Args:
        num_samples: dataset length.
        seed: base seed.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples
