"""Module wrapper of :func:`~cmkd_lightning.functional.rkd_loss`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.functional.rkd import rkd_angle_loss, rkd_distance_loss
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.utilities.validation import check_non_negative, check_positive


class RKDLoss(FeatureDistillationLoss):
    """Relational KD (Park et al., CVPR 2019): distance-wise and angle-wise relations of the pooled features.

    Components: ``distance_loss`` and ``angle_loss`` (before their weights). No connector. Defaults: the
    reference's weights 25 and 50, Euclidean (not squared) distances, ``eps = 1e-12``, the ``"pooled"`` features,
    loss weight 1 and cross-entropy weight 1.

    Args:
        distance_weight: weight of the distance term.
        angle_weight: weight of the angle term.
        squared: squared distances.
        eps: distance clamp.
        student_layers: one feature name (default ``["pooled"]``).
        teacher_layers: one feature name (default ``["pooled"]``).
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "rkd"
    recommended_weight = 1.0
    recommended_ce_weight = 1.0

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        squared: bool = False,
        eps: float = 1e-12,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        check_non_negative(distance_weight, "distance_weight")
        check_non_negative(angle_weight, "angle_weight")
        check_positive(eps, "eps")
        self.distance_weight, self.angle_weight, self.squared, self.eps = distance_weight, angle_weight, squared, eps

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        return ["pooled"]

    @override
    def forward(  # type: ignore[override]
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor | None = None,
        *,
        student_features: Sequence[Tensor],
        teacher_features: Sequence[Tensor],
        indices: Tensor | None = None,
        contrast_indices: Tensor | None = None,
    ) -> dict[str, Tensor]:
        s = student_features[0].reshape(student_features[0].shape[0], -1)
        t = teacher_features[0].detach().reshape(teacher_features[0].shape[0], -1)
        distance = rkd_distance_loss(s, t, squared=self.squared, eps=self.eps)
        angle = rkd_angle_loss(s, t)
        loss = self.distance_weight * distance + self.angle_weight * angle
        return {"loss": loss, "distance_loss": distance.detach(), "angle_loss": angle.detach()}
