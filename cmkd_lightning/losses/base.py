"""The contract every distillation loss module follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn
from typing_extensions import override


class DistillationLoss(nn.Module, ABC):
    """Base class of the distillation losses.

    A loss maps ``(student_logits, teacher_logits, targets)`` to a dict holding a differentiable ``"loss"`` (the
    loss's own internal weights applied) and detached components for logging. Global weights, the
    cross-entropy on labels and the warm-up schedule are applied by the module that sums the losses
    (:class:`~cmkd_lightning.DistillationModule`), which calls :meth:`warmup_factor` with the trainer's epoch.

    Teacher logits are detached inside every loss: no gradient reaches the teacher.

    Class attributes:
        name: short key used in logged metric names (``train/<name>/<component>``).
        requires_targets: whether ``forward`` needs ``targets``.

    Args:
        warmup_epochs: length of a linear warm-up of this loss, ``0`` for none; the factor in epoch ``e``
            (0-based, as Lightning counts) is ``min((e + 1) / warmup_epochs, 1)``, the reference code's
            ``min(epoch / warmup, 1)`` with epochs counted from 1.
    """

    name: ClassVar[str] = "distill"
    requires_targets: ClassVar[bool] = False

    def __init__(self, warmup_epochs: int = 0) -> None:
        super().__init__()
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"Expected `warmup_epochs` to be an integer >= 0, but got {warmup_epochs!r}.")
        self.warmup_epochs = warmup_epochs

    def warmup_factor(self, epoch: int) -> float:
        """Multiplier of this loss in (0-based) ``epoch``: a linear ramp over ``warmup_epochs``, then 1."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    @abstractmethod
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            student_logits: ``(N, C)`` student logits.
            teacher_logits: ``(N, C)`` teacher logits.
            targets: ``(N,)`` class indices; required when :attr:`requires_targets` is true.

        Returns:
            ``{"loss": scalar, <component>: detached scalar, ...}``.
        """

    @override
    def extra_repr(self) -> str:
        return f"warmup_epochs={self.warmup_epochs}" if self.warmup_epochs else ""
