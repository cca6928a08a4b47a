"""Module wrapper of :func:`~cmkd_lightning.functional.at_loss`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional.at import at_loss
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.utilities.validation import check_positive


class ATLoss(FeatureDistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) over every stage after the stem.

    Component: ``at_loss``. No connector. Defaults: the reference's ``p = 2``, every ``stage<k>`` of both networks
    (their counts must agree), loss weight 1000, cross-entropy weight 1.

    Args:
        p: exponent of the attention maps.
        student_layers: feature names (default: every stage).
        teacher_layers: feature names (default: every stage).
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "at"
    recommended_weight = 1000.0
    recommended_ce_weight = 1.0

    def __init__(
        self,
        p: float = 2.0,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        check_positive(p, "p")
        self.p = p

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        return self.stage_names(model)

    @override
    def build_connectors(self, student_shapes, teacher_shapes, student, teacher) -> None:  # type: ignore[no-untyped-def]
        if len(student_shapes) != len(teacher_shapes):
            raise InvalidArgumentError(
                f"Expected as many student as teacher features for AT, but got {len(student_shapes)} and "
                f"{len(teacher_shapes)}: pass `student_layers` / `teacher_layers`."
            )

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
        loss = at_loss(student_features, teacher_features, p=self.p)
        return {"loss": loss, "at_loss": loss.detach()}
