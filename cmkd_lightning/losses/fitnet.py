"""Module wrapper of :func:`~cmkd_lightning.functional.fitnet_loss` with FitNet's convolutional regressor."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError, UsageError
from cmkd_lightning.functional.fitnet import fitnet_loss
from cmkd_lightning.losses.feature import FeatureDistillationLoss


class ConvRegressor(nn.Module):
    """FitNet's regressor from a ``(C_s, H_s, W_s)`` feature to a ``(C_t, H_t, W_t)`` one: conv, BN, ReLU.

    The convolution halves (3x3, stride 2), doubles (4x4 transposed, stride 2) or shrinks by a valid
    ``(1 + H_s - H_t) x (1 + W_s - W_t)`` kernel, as the reference's ``ConvReg``; PyTorch's default initialisation.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        (sc, sh, sw), (tc, th, tw) = student_shape, teacher_shape
        if sh == 2 * th:
            self.conv: nn.Module = nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)
        elif sh * 2 == th:
            self.conv = nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)
        elif sh >= th and sw >= tw:
            self.conv = nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))
        else:
            raise InvalidArgumentError(
                f"Expected the student's hint feature {tuple(student_shape)} to be at least as large as the "
                f"teacher's {tuple(teacher_shape)} or half its size, but it is neither."
            )
        self.bn = nn.BatchNorm2d(tc)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_s, H_s, W_s) -> (N, C_t, H_t, W_t)``."""
        return self.relu(self.bn(self.conv(x)))


class FitNetLoss(FeatureDistillationLoss):
    """FitNet (Romero et al., ICLR 2015): MSE between a regressed student stage and the teacher's hint stage.

    Component: ``hint_loss``. The regressor (:class:`ConvRegressor`) is a trainable connector. Defaults: the
    reference's (mdistiller) hint layer 2 (``"stage2"`` of both networks), loss weight 100, cross-entropy weight 1.

    Args:
        student_layers: one feature name (default ``["stage2"]``).
        teacher_layers: one feature name (default ``["stage2"]``).
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: see :class:`DistillationLoss`.

    Example:
        >>> import torch
        >>> from cmkd_lightning.models import create_model
        >>> loss = FitNetLoss()
        >>> loss.build(create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10))
        >>> loss.student_specs, loss.regressor.conv
        (['layer2'], Conv2d(32, 32, kernel_size=(1, 1), stride=(1, 1)))
        >>> fs, ft, z = torch.randn(2, 32, 16, 16), torch.randn(2, 32, 16, 16), torch.randn(2, 10)
        >>> sorted(loss(z, z, student_features=[fs], teacher_features=[ft]))
        ['hint_loss', 'loss']
    """

    name = "fitnet"
    recommended_weight = 100.0
    recommended_ce_weight = 1.0

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        for role, names in (("student", self.student_layers), ("teacher", self.teacher_layers)):
            if names is not None and len(names) != 1:
                raise InvalidArgumentError(f"Expected `{role}_layers` to name one hint layer, but got {names!r}.")
        self.regressor: ConvRegressor | None = None

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        return ["stage2"]

    @override
    def build_connectors(self, student_shapes, teacher_shapes, student, teacher) -> None:  # type: ignore[no-untyped-def]
        self.regressor_shapes = [tuple(student_shapes[0]), tuple(teacher_shapes[0])]
        self.regressor = ConvRegressor(student_shapes[0], teacher_shapes[0])

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
        if self.regressor is None:
            raise UsageError("FitNetLoss has no regressor yet: call `build(student, teacher)` first.")
        loss = fitnet_loss(self.regressor(student_features[0]), teacher_features[0])
        return {"loss": loss, "hint_loss": loss.detach()}
