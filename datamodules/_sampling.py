"""A shuffling sampler whose order depends only on (seed, epoch), so resumed runs see the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from cmkd_lightning.errors import InvalidArgumentError


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
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def skip(self, epoch: int, num_samples: int) -> None:
        """Make the next pass over ``epoch`` start after its first ``num_samples`` indices (a mid-epoch resume).

        Applies once, to the next iteration whose epoch is ``epoch``; :class:`cmkd_lightning.callbacks.Preemption`
        calls it when a run resumes from a checkpoint saved inside an epoch.

        Example:
            >>> sampler = EpochShuffleSampler(6, seed=0)
            >>> full = list(sampler)
            >>> sampler.skip(0, 4)
            >>> list(sampler) == full[4:], list(sampler) == full
            (True, True)
        """
        if not isinstance(num_samples, int) or not 0 <= num_samples <= self.num_samples:
            raise InvalidArgumentError(
                f"Expected `num_samples` to be an integer in [0, {self.num_samples}], but got {num_samples!r}."
            )
        self._skip = (epoch, num_samples)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] :]
            self._skip = None
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples
