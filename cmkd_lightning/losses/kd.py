"""Module wrapper of :func:`~cmkd_lightning.functional.kd_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.functional._checks import check_positive
from cmkd_lightning.functional.kd import kd_loss
from cmkd_lightning.losses.base import DistillationLoss


class KDLoss(DistillationLoss):
    """Hinton et al. 2015 KD: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean.

    Components: ``kd`` (same as ``loss``). Recipes: CIFAR-100 ``temperature=4`` with weights CE 0.1 / KD 0.9 (the
    recommended weights, used by :class:`~cmkd_lightning.DistillationModule` unless ``loss_weights`` / ``ce_weight``
    are given); ImageNet ``temperature=1``, 0.5 / 0.5.

    Args:
        temperature: softening temperature.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "kd"
    recommended_weight = 0.9
    recommended_ce_weight = 0.1

    def __init__(self, temperature: float = 4.0, warmup_epochs: int = 0) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        self.temperature = temperature

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        loss = kd_loss(student_logits, teacher_logits.detach(), temperature=self.temperature, validate_args=False)
        return {"loss": loss, "kd": loss.detach()}
