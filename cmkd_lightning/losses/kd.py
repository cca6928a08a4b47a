"""Module wrapper of :func:`~cmkd_lightning.functional.kd_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError
from cmkd_lightning.functional.kd import kd_loss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_positive


class KDLoss(DistillationLoss):
    """Hinton et al. 2015 KD: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean.

    Components: ``kd_loss`` (same as ``loss``). Recipes: CIFAR-100 ``temperature=4`` with weights CE 0.1 / KD 0.9 (the
    recommended weights, used by :class:`~cmkd_lightning.DistillationModule` unless ``loss_weights`` / ``ce_weight``
    are given); ImageNet ``temperature=1``, 0.5 / 0.5.

    ``logit_standardization=True`` z-scores both logits first: the "KD + LS" of Sun et al. (CVPR 2024), equal to
    :class:`LSKDLoss` at the same temperature; their recipe is ``temperature=2`` with ``loss_weights=[9.0]`` and
    ``ce_weight=0.1`` (pass them: the recommended weights stay plain KD's).

    Args:
        temperature: softening temperature.
        warmup_epochs: see :class:`DistillationLoss`.
        logit_standardization: z-score the student's and the teacher's logits per sample before the softmax.
        eps: added to the standard deviation of the z-score (used only with ``logit_standardization``).
    """

    name = "kd"
    recommended_weight = 0.9
    recommended_ce_weight = 0.1

    def __init__(
        self,
        temperature: float = 4.0,
        warmup_epochs: int = 0,
        logit_standardization: bool = False,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        if not isinstance(logit_standardization, bool):
            raise ArgumentTypeError(
                f"Expected `logit_standardization` to be a bool, but got {logit_standardization!r}."
            )
        check_positive(eps, "eps")
        self.temperature = temperature
        self.logit_standardization = logit_standardization
        self.eps = eps

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        loss = kd_loss(
            student_logits,
            teacher_logits.detach(),
            temperature=self.temperature,
            logit_standardization=self.logit_standardization,
            eps=self.eps,
            validate_args=False,
        )
        return {"loss": loss, "kd_loss": loss.detach()}
