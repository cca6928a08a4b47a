"""Module wrapper of :func:`~cmkd_lightning.functional.nkd_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.functional.nkd import nkd_terms
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_non_negative, check_positive


class NKDLoss(DistillationLoss):
    """Normalized KD (Yang et al., ICCV 2023): target term plus ``gamma * T^2 *`` non-target cross-entropy.

    Components: ``target_loss`` and ``non_target_loss`` (the latter before ``gamma`` and ``T^2``). Recipe
    (ImageNet): ``temperature=1, gamma=1.5``. Recommended weights: loss 1, CE 1. ``targets`` may be class indices of any
    integer dtype or ``(N, C)`` soft targets (mixup/cutmix), read as their arg-max class as the authors' code does.

    Args:
        temperature: temperature of the non-target term.
        gamma: non-target weight.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "nkd"
    requires_targets = True
    recommended_weight = 1.0
    recommended_ce_weight = 1.0

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5, warmup_epochs: int = 0) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        check_non_negative(gamma, "gamma")
        self.temperature, self.gamma = temperature, gamma

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        target, non_target = nkd_terms(
            student_logits, teacher_logits.detach(), targets, temperature=self.temperature, validate_args=False
        )
        target, non_target = target.mean(), non_target.mean()
        return {
            "loss": target + self.gamma * self.temperature**2 * non_target,
            "target_loss": target.detach(),
            "non_target_loss": non_target.detach(),
        }
