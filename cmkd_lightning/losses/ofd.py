"""Module wrapper of :func:`~cmkd_lightning.functional.ofd_loss` with OFD's connectors and margins."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError, UsageError
from cmkd_lightning.functional.ofd import ofd_loss, ofd_margin
from cmkd_lightning.losses.feature import FeatureDistillationLoss


def ofd_connector(student_channels: int, teacher_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN from the student's to the teacher's channels, initialised as in the reference.

    Conv weights ``N(0, 2 / (k * k * C_t))``, BN weight 1 and bias 0.
    """
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    bn = nn.BatchNorm2d(teacher_channels)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
    bn.weight.data.fill_(1)
    bn.bias.data.zero_()
    return nn.Sequential(conv, bn)


class OFDLoss(FeatureDistillationLoss):
    """Overhaul of feature distillation (Heo et al., ICCV 2019): partial L2 on pre-ReLU features.

    Component: ``ofd_loss``. Connectors: one conv + BN per stage (:func:`ofd_connector`); margins (buffers) from the
    teacher's BatchNorm before each pre-activation (:func:`~cmkd_lightning.functional.ofd_margin`), computed
    once in :meth:`build` from the teacher's weights. Defaults: the reference's pre-activation stages of both
    networks (the student's post-activation stages when it names no pre-activations), aligned on the last
    ones when their counts differ, 1x1 connectors, loss weight 1e-3, cross-entropy weight 1.

    Args:
        student_layers: feature names (default: every ``stage<k>_preact``).
        teacher_layers: pre-ReLU feature names (default: every ``stage<k>_preact``).
        margin_layers: paths of the teacher's BatchNorms whose affine parameters give each margin (default: the
            zoo's :func:`~cmkd_lightning.models.margin_layers` of ``teacher_layers``).
        kernel_size: connector kernel size.
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "ofd"
    recommended_weight = 1e-3
    recommended_ce_weight = 1.0

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        margin_layers: Sequence[str] | None = None,
        kernel_size: int = 1,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        if margin_layers is not None and (isinstance(margin_layers, str) or not margin_layers):
            raise InvalidArgumentError(
                f"Expected `margin_layers` to be a non-empty list of module paths, but got {margin_layers!r}."
            )
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidArgumentError(f"Expected `kernel_size` to be an odd integer >= 1, but got {kernel_size!r}.")
        self.margin_layers = None if margin_layers is None else list(margin_layers)
        self.kernel_size = kernel_size
        self.connectors = nn.ModuleList()
        self._teacher_names: list[str] = []

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        if role == "teacher":
            return self.stage_names(model, preact=True)
        try:
            return self.stage_names(model, preact=True)
        except ValueError:
            return self.stage_names(model)

    @override
    def build_connectors(self, student_shapes, teacher_shapes, student, teacher) -> None:  # type: ignore[no-untyped-def]
        from cmkd_lightning.models import margin_layers as zoo_margins

        n = min(len(student_shapes), len(teacher_shapes))
        self.student_specs, self.teacher_specs = self.student_specs[-n:], self.teacher_specs[-n:]
        student_shapes, teacher_shapes = student_shapes[-n:], teacher_shapes[-n:]
        if self.margin_layers is not None:
            paths = self.margin_layers[-n:]
        else:
            names = (self.teacher_layers or self.default_layers("teacher", teacher))[-n:]
            known = zoo_margins(teacher)
            missing = [name for name in names if name not in known]
            if missing:
                raise InvalidArgumentError(
                    f"Expected `margin_layers` for the teacher features {missing} (the zoo knows the BatchNorms "
                    f"of {sorted(known)}), but got None."
                )
            paths = [known[name] for name in names]
        if len(paths) != n:
            raise InvalidArgumentError(f"Expected one margin layer per stage ({n}), but got {len(paths)}.")
        modules = dict(teacher.named_modules())
        self.connectors = nn.ModuleList()
        for i, (s, t, path) in enumerate(zip(student_shapes, teacher_shapes, paths, strict=True)):
            bn = modules.get(path)
            if not isinstance(bn, nn.BatchNorm2d) or bn.weight is None or bn.weight.shape[0] != t[0]:
                raise InvalidArgumentError(
                    f"Expected margin layer {path!r} to be an affine BatchNorm2d of the teacher with {t[0]} channels, "
                    f"but got {type(bn).__name__ if bn is not None else 'no such module'}."
                )
            self.connectors.append(ofd_connector(s[0], t[0], self.kernel_size))
            self.register_buffer(f"margin_{i}", ofd_margin(bn.weight, bn.bias))

    def margins(self) -> list[Tensor]:
        """The per-stage margins ``(C_j,)``."""
        return [getattr(self, f"margin_{i}") for i in range(len(self.connectors))]

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
        if not len(self.connectors):
            raise UsageError("OFDLoss has no connectors yet: call `build(student, teacher)` first.")
        connected = [c(f) for c, f in zip(self.connectors, student_features, strict=True)]
        loss = ofd_loss(connected, teacher_features, self.margins())
        return {"loss": loss, "ofd_loss": loss.detach()}
