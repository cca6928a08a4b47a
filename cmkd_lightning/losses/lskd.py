"""Module wrapper of :func:`~cmkd_lightning.functional.lskd_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.functional.lskd import lskd_loss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_positive


class LSKDLoss(DistillationLoss):
    """Logit-standardised KD (Sun et al., CVPR 2024): KD on z-scored logits.

    Components: ``lskd_loss`` (same as ``loss``). Recipe: ``temperature=2`` with weights CE 0.1 / KD 9 (the
    recommended weights, used by :class:`~cmkd_lightning.DistillationModule` unless ``loss_weights`` /
    ``ce_weight`` are given). The method is spelled ``lskd`` everywhere (loss key, module, config folders);
    ``ls_kd_loss`` and ``cmkd_lightning.losses.ls_kd`` remain as deprecated aliases.

    Args:
        temperature: base temperature.
        eps: added to the standard deviation of the z-score.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "lskd"
    recommended_weight = 9.0
    recommended_ce_weight = 0.1

    def __init__(self, temperature: float = 2.0, eps: float = 1e-7, warmup_epochs: int = 0) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        check_positive(eps, "eps")
        self.temperature = temperature
        self.eps = eps

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        loss = lskd_loss(
            student_logits, teacher_logits.detach(), temperature=self.temperature, eps=self.eps, validate_args=False
        )
        return {"loss": loss, "lskd_loss": loss.detach()}
