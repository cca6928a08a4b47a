r"""Learning-rate schedules for :class:`~cmkd_lightning.DistillationModule`'s ``lr_scheduler`` argument.

Both step once per epoch and take the run's length as ``max_epochs``; left at ``None`` it is filled in with the
trainer's ``max_epochs`` when the module builds the schedule, so a YAML entry does not repeat it:

.. code-block:: yaml

    model:
      init_args:
        optimizer:
          class_path: torch.optim.SGD
          init_args: {lr: 0.2, momentum: 0.9, weight_decay: 1.0e-4}
        lr_scheduler:
          class_path: cmkd_lightning.schedules.WarmupCosine
          init_args: {warmup_epochs: 5}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from cmkd_lightning.errors import InvalidArgumentError

__all__ = ["RunLengthScheduler", "StepOrCosine", "WarmupCosine"]


class RunLengthScheduler(LRScheduler):
    """An epoch-wise schedule that needs the run's length; ``max_epochs=None`` takes the trainer's."""

    def __init__(self, optimizer: Optimizer, max_epochs: int | None = None, last_epoch: int = -1) -> None:
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1
        ):
            raise InvalidArgumentError(f"Expected `max_epochs` to be an integer >= 1 or None, but got {max_epochs!r}.")
        self.max_epochs = max_epochs
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """The multiple of the base learning rate in ``epoch`` (0-based)."""
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """Closed form: :meth:`factor` of the current epoch times each base learning rate."""
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class StepOrCosine(RunLengthScheduler):
    r"""Step decay when every milestone falls within the run, else a cosine over it (the module's default).

    .. math::
        \eta_e = \eta_0\,\gamma^{|\{m \in M:\ m \le e\}|} \ \text{if}\ \max M < E, \qquad
        \eta_e = \eta_0\,\tfrac12\big(1 + \cos(\pi e / E)\big) \ \text{otherwise}

    with ``M = milestones`` and ``E = max_epochs``. The defaults are the 240-epoch CIFAR-100 recipe (x0.1 at 150, 180,
    210); a shorter run still decays to 0 instead of never decaying. An unknown length (``max_epochs`` left ``None``
    outside the module) keeps the step decay.

    Args:
        optimizer: the wrapped optimiser.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: multiplicative decay at each milestone.
        max_epochs: the run's length in epochs; ``None``: the trainer's ``max_epochs``.
        last_epoch: index of the last epoch (``-1`` to start).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = StepOrCosine(opt, milestones=[1, 2], max_epochs=3)
        >>> for _ in range(2):
        ...     opt.step()
        ...     sched.step()
        >>> round(opt.param_groups[0]["lr"], 6), sched.uses_milestones
        (0.01, True)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int] = (150, 180, 210),
        gamma: float = 0.1,
        max_epochs: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, max_epochs, last_epoch)

    @property
    def uses_milestones(self) -> bool:
        """Whether the step decay applies (every milestone below ``max_epochs``, or the length unknown)."""
        return self.max_epochs is None or all(m < self.max_epochs for m in self.milestones)

    def factor(self, epoch: int) -> float:
        """``gamma`` to the number of milestones reached, or the cosine factor."""
        if self.uses_milestones:
            return self.gamma ** sum(m <= epoch for m in self.milestones)
        return _cosine(epoch / self.max_epochs)


class WarmupCosine(RunLengthScheduler):
    r"""Linear warm-up from ``start_factor`` to 1 over ``warmup_epochs``, then a cosine to ``min_factor``.

    .. math::
        f_e = s + (1 - s)\,\frac{e}{W} \ (e < W), \qquad
        f_e = m + (1 - m)\,\tfrac12\Big(1 + \cos\big(\pi\,\tfrac{e - W}{E - W}\big)\Big) \ (e \ge W)

    and ``lr = f_e * base_lr``, with ``s = start_factor``, ``m = min_factor``, ``W = warmup_epochs`` and
    ``E = max_epochs``: the ImageNet-style recipe of large-batch training.

    Args:
        optimizer: the wrapped optimiser.
        warmup_epochs: epochs of linear warm-up (0, the default: a plain cosine over the run).
        max_epochs: the run's length in epochs; ``None``: the trainer's ``max_epochs``.
        start_factor: multiple of the base learning rate in the first epoch, in ``(0, 1]``.
        min_factor: multiple of the base learning rate the cosine ends at, in ``[0, 1)``.
        last_epoch: index of the last epoch (``-1`` to start).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = WarmupCosine(opt, warmup_epochs=2, max_epochs=4, start_factor=0.5)
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.5, 0.75, 1.0, 0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int = 0,
        max_epochs: int | None = None,
        start_factor: float = 0.01,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise InvalidArgumentError(f"Expected `warmup_epochs` to be an integer >= 0, but got {warmup_epochs!r}.")
        if not 0 < start_factor <= 1:
            raise InvalidArgumentError(f"Expected `start_factor` to be in (0, 1], but got {start_factor!r}.")
        if not 0 <= min_factor < 1:
            raise InvalidArgumentError(f"Expected `min_factor` to be in [0, 1), but got {min_factor!r}.")
        self.warmup_epochs, self.start_factor, self.min_factor = warmup_epochs, float(start_factor), float(min_factor)
        super().__init__(optimizer, max_epochs, last_epoch)

    def factor(self, epoch: int) -> float:
        """The warm-up ramp, then the cosine."""
        if epoch < self.warmup_epochs:
            return self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup_epochs
        if epoch == self.warmup_epochs:  # the cosine's start: no run length needed yet
            return 1.0
        if self.max_epochs is None:
            raise InvalidArgumentError(
                "Expected `max_epochs` (the run's length) to place the cosine, but got None: pass it, or let "
                "DistillationModule fill it in from the trainer."
            )
        span = max(1, self.max_epochs - self.warmup_epochs)
        return self.min_factor + (1.0 - self.min_factor) * _cosine((epoch - self.warmup_epochs) / span)
