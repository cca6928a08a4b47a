r"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) with RepDistiller's layout.

WRN-d-k: a 3×3 stem with 16 channels, three stages of ``n = (d - 4) / 6`` pre-activation blocks with
``16k, 32k, 64k`` channels at strides 1, 2, 2, then BN-ReLU, global average pooling and ``fc``. Attribute names
(``block1..3.layer.i``, ``convShortcut``, final ``bn1``, ``fc``) equal those of the RepDistiller / mdistiller
definitions so their checkpoints load with ``strict=True``.

Paper: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._init import init_weights

__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation block ``BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3`` plus shortcut.

    When the channel count changes, the shortcut is a 1×1 convolution ``convShortcut`` applied to the
    pre-activated input; otherwise it is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None  # name fixed by the published checkpoints
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class _Stage(nn.Module):
    """A stage of blocks stored under ``layer`` (the published key prefix is ``blockK.layer.i``)."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs.

    Args:
        depth: ``6n + 4`` (16, 40, ...).
        widen_factor: channel multiplier ``k`` of the three stages.
        num_classes: number of output classes.
        drop_rate: dropout probability between the two convolutions of each block (0 in RepDistiller).

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise InvalidArgumentError(f"Expected `depth` to be 6n + 4 with n >= 1, but got {depth}.")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = _Stage(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = _Stage(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def wrn_16_1(num_classes: int = 100) -> WideResNet:
    """WRN-16-1 (0.18 M parameters at 100 classes)."""
    return WideResNet(16, 1, num_classes)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2 (0.70 M parameters at 100 classes)."""
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1 (0.57 M parameters at 100 classes)."""
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2 (2.26 M parameters at 100 classes)."""
    return WideResNet(40, 2, num_classes)
