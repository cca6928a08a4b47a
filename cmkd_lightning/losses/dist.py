"""Module wrapper of :func:`~cmkd_lightning.functional.dist_loss`."""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from cmkd_lightning.functional.dist import dist_terms
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_non_negative, check_positive


class DISTLoss(DistillationLoss):
    """DIST (Huang et al., NeurIPS 2022): ``tau^2 * (beta * L_inter + gamma * L_intra)``.

    Components: ``inter_loss`` and ``intra_loss`` (``1 - mean Pearson``, before weights). With batch size 1 the
    intra-class term is 0 (see :func:`~cmkd_lightning.functional.dist_loss`). Recipe: ``temperature=4`` (CIFAR-100) or 1
    (ImageNet), ``beta = gamma = 2`` (the defaults), loss weight 1 and CE weight 1 (the recommended weights).

    Args:
        temperature: ``tau``.
        beta: inter-class weight (the authors' 2).
        gamma: intra-class weight (the authors' 2).
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "dist"
    recommended_weight = 1.0
    recommended_ce_weight = 1.0

    def __init__(self, temperature: float = 4.0, beta: float = 2.0, gamma: float = 2.0, warmup_epochs: int = 0) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        check_non_negative(beta, "beta")
        check_non_negative(gamma, "gamma")
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        inter, intra = dist_terms(
            student_logits, teacher_logits.detach(), temperature=self.temperature, validate_args=False
        )
        loss = self.temperature**2 * (self.beta * inter + self.gamma * intra)
        return {"loss": loss, "inter_loss": inter.detach(), "intra_loss": intra.detach()}
