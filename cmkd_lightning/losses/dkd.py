"""Module wrapper of :func:`~cmkd_lightning.functional.dkd_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError
from cmkd_lightning.functional.dkd import dkd_terms
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_non_negative, check_positive


class DKDLoss(DistillationLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD`` with a linear warm-up.

    Components: ``tckd_loss`` and ``nckd_loss`` (before ``alpha``/``beta`` and ``T^2``). The warm-up
    ``min(epoch / warmup, 1)`` of the reference is applied by the training module through
    :meth:`warmup_factor` (20 epochs on CIFAR-100, 1 on ImageNet). Recommended weights: loss 1, CE 1.

    ``logit_standardization=True`` z-scores both logits first: the "DKD + LS" of Sun et al. (CVPR 2024). Their
    CIFAR-100 command multiplies ``alpha`` and ``beta`` by 9 and sets the temperature to 2 (res32x4->res8x4:
    ``alpha=9, beta=72, temperature=2``, CE 1, warm-up 20). Targets may have any integer dtype.

    Args:
        alpha: TCKD weight.
        beta: NCKD weight (CIFAR-100: 8; 2 for res56->res20 and res110->res32; 6 for wrn40_2->wrn16_2,
            wrn40_2->wrn40_1, vgg13->vgg8 and vgg13->mv2; 8 for wrn40_2->shuv1 and wrn40_2->res8x4;
            ImageNet: 0.5 for R34->R18, 2 for R50->MV1).
        temperature: softening temperature (4 on CIFAR-100, 1 on ImageNet).
        warmup_epochs: linear warm-up length in epochs.
        logit_standardization: z-score the student's and the teacher's logits per sample before the softmax.
        eps: added to the standard deviation of the z-score (used only with ``logit_standardization``).
    """

    name = "dkd"
    requires_targets = True
    recommended_weight = 1.0
    recommended_ce_weight = 1.0

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        logit_standardization: bool = False,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(warmup_epochs)
        check_non_negative(alpha, "alpha")
        check_non_negative(beta, "beta")
        check_positive(temperature, "temperature")
        if not isinstance(logit_standardization, bool):
            raise ArgumentTypeError(
                f"Expected `logit_standardization` to be a bool, but got {logit_standardization!r}."
            )
        check_positive(eps, "eps")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.logit_standardization = logit_standardization
        self.eps = eps

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        tckd, nckd = dkd_terms(
            student_logits,
            teacher_logits.detach(),
            targets,
            temperature=self.temperature,
            logit_standardization=self.logit_standardization,
            eps=self.eps,
            validate_args=False,
        )
        tckd, nckd = tckd.mean(), nckd.mean()
        loss = self.temperature**2 * (self.alpha * tckd + self.beta * nckd)
        return {"loss": loss, "tckd_loss": tckd.detach(), "nckd_loss": nckd.detach()}
