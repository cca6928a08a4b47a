r"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) with RepDistiller's layout.

A 3×3 stem, three stages of ``n = (depth - 2) / 6`` basic blocks at strides 1, 2, 2, global average pooling and a
linear classifier ``fc``. The ``x4`` variants widen every stage (32 stem, 64/128/256 stages). Attribute names
(``conv1``, ``bn1``, ``layer1..3``, ``downsample``, ``fc``) equal those of the RepDistiller / mdistiller
definitions, so the community's CIFAR-100 ``ckpt_epoch_240.pth`` files load with ``strict=True``.

Paper: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (Sec. 4.2, CIFAR-10 ResNets);
Tian et al., "Contrastive Representation Distillation", ICLR 2020 (the x4 variants and teacher checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._init import init_weights

__all__ = [
    "CifarResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu = nn.ReLU()  # a module, so that a hook reads its input: the block's pre-activation (OFD)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs with ``depth = 6n + 2`` layers.

    Args:
        depth: total number of weighted layers, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110).
        widths: channels of the stem and of the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: number of output classes.

    Shape:
        Input ``(N, 3, H, W)`` (32×32 on CIFAR), output logits ``(N, num_classes)``.
    """

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise InvalidArgumentError(f"Expected `depth` to be 6n + 2 with n >= 1, but got {depth}.")
        if len(widths) != 4:
            raise InvalidArgumentError(f"Expected `widths` to hold 4 channel counts, but got {list(widths)}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def resnet8(num_classes: int = 100) -> CifarResNet:
    """ResNet-8 (0.08 M parameters at 100 classes)."""
    return CifarResNet(8, _BASE, num_classes)


def resnet14(num_classes: int = 100) -> CifarResNet:
    """ResNet-14 (0.18 M parameters at 100 classes)."""
    return CifarResNet(14, _BASE, num_classes)


def resnet20(num_classes: int = 100) -> CifarResNet:
    """ResNet-20 (0.28 M parameters at 100 classes)."""
    return CifarResNet(20, _BASE, num_classes)


def resnet32(num_classes: int = 100) -> CifarResNet:
    """ResNet-32 (0.47 M parameters at 100 classes)."""
    return CifarResNet(32, _BASE, num_classes)


def resnet44(num_classes: int = 100) -> CifarResNet:
    """ResNet-44 (0.67 M parameters at 100 classes)."""
    return CifarResNet(44, _BASE, num_classes)


def resnet56(num_classes: int = 100) -> CifarResNet:
    """ResNet-56 (0.86 M parameters at 100 classes)."""
    return CifarResNet(56, _BASE, num_classes)


def resnet110(num_classes: int = 100) -> CifarResNet:
    """ResNet-110 (1.74 M parameters at 100 classes)."""
    return CifarResNet(110, _BASE, num_classes)


def resnet8x4(num_classes: int = 100) -> CifarResNet:
    """ResNet-8 with 4× wider stages (1.23 M parameters at 100 classes)."""
    return CifarResNet(8, _X4, num_classes)


def resnet32x4(num_classes: int = 100) -> CifarResNet:
    """ResNet-32 with 4× wider stages (7.43 M parameters at 100 classes)."""
    return CifarResNet(32, _X4, num_classes)
