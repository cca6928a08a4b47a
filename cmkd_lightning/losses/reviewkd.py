"""Module wrapper of :func:`~cmkd_lightning.functional.hcl_loss` with ReviewKD's attention-based fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError, UsageError
from cmkd_lightning.functional.reviewkd import hcl_loss
from cmkd_lightning.losses.feature import FeatureDistillationLoss


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF) of one level with the deeper one.

    A 1x1 conv-BN to ``mid`` channels, fused with the deeper level by two attention maps, then a 3x3 conv-BN to
    the teacher's channels.

    Both convs start from Kaiming-uniform with ``a = 1``; the attention conv (``fuse``) from PyTorch's default.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, size: tuple[int, int], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Return ``(output for the loss at out_size, fused features passed to the next shallower level)``."""
        x = self.conv1(x)
        if self.att_conv is not None and residual is not None:
            residual = F.interpolate(residual, size, mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def _as_map(x: Tensor) -> Tensor:
    return x if x.ndim == 4 else x.reshape(x.shape[0], -1, 1, 1)


class ReviewKDLoss(FeatureDistillationLoss):
    """ReviewKD (Chen et al., CVPR 2021): the student's stages fused deep-to-shallow by ABFs, matched with HCL.

    Component: ``hcl_loss``. Connectors: one :class:`AttentionFusion` per level (``mid = min(512, C of the
    deepest student level)``), sized from the features' shapes (the reference's ``IN_CHANNELS``, ``OUT_CHANNELS``,
    ``SHAPES``, ``OUT_SHAPES``). Defaults: the reference's student post-activation stages plus pooled features,
    teacher pre-activation stages plus pooled features (aligned on the deepest levels when the counts differ),
    a 20-epoch linear warm-up, loss weight 1 (5 for ResNet32x4 -> ResNet8x4 in the reference configs) and
    cross-entropy weight 1.

    Args:
        student_layers: shallow-to-deep feature names (default: every ``stage<k>`` then ``"pooled"``).
        teacher_layers: shallow-to-deep feature names (default: every ``stage<k>_preact`` then ``"pooled"``).
        max_mid_channels: cap of the ABFs' middle width.
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: linear warm-up (the reference's 20).
    """

    name = "reviewkd"
    recommended_weight = 1.0
    recommended_ce_weight = 1.0

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        max_mid_channels: int = 512,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        if isinstance(max_mid_channels, bool) or not isinstance(max_mid_channels, int) or max_mid_channels < 1:
            raise InvalidArgumentError(
                f"Expected `max_mid_channels` to be a positive integer, but got {max_mid_channels!r}."
            )
        self.max_mid_channels = max_mid_channels
        self.abfs = nn.ModuleList()
        self._sizes: list[tuple[int, int]] = []
        self._out_sizes: list[tuple[int, int]] = []

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        return [*self.stage_names(model, preact=role == "teacher"), "pooled"]

    @override
    def build_connectors(self, student_shapes, teacher_shapes, student, teacher) -> None:  # type: ignore[no-untyped-def]
        n = min(len(student_shapes), len(teacher_shapes))
        self.student_specs, self.teacher_specs = self.student_specs[-n:], self.teacher_specs[-n:]
        s_shapes = [tuple(s) if len(s) == 3 else (s[0], 1, 1) for s in student_shapes[-n:]]
        t_shapes = [tuple(t) if len(t) == 3 else (t[0], 1, 1) for t in teacher_shapes[-n:]]
        mid = min(self.max_mid_channels, s_shapes[-1][0])
        abfs = [
            AttentionFusion(s[0], mid, t[0], i < n - 1) for i, (s, t) in enumerate(zip(s_shapes, t_shapes, strict=True))
        ]
        self.abfs = nn.ModuleList(abfs[::-1])  # deepest level first
        self._sizes = [(s[1], s[2]) for s in s_shapes[::-1]]
        self._out_sizes = [(t[1], t[2]) for t in t_shapes[::-1]]

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
        if not len(self.abfs):
            raise UsageError("ReviewKDLoss has no ABF connectors yet: call `build(student, teacher)` first.")
        xs = [_as_map(f) for f in student_features][::-1]
        outputs: list[Tensor] = []
        residual = None
        for x, abf, size, out_size in zip(xs, self.abfs, self._sizes, self._out_sizes, strict=True):
            out, residual = abf(x, residual, size, out_size)
            outputs.insert(0, out)
        loss = hcl_loss(outputs, [_as_map(f) for f in teacher_features])
        return {"loss": loss, "hcl_loss": loss.detach()}
