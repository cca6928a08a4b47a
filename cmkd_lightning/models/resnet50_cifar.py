r"""ResNet-50 for CIFAR (RepDistiller's ``ResNet50`` from ``resnetv2.py``).

ImageNet ResNet-50's bottleneck stages (3, 4, 6, 3 blocks; 256/512/1024/2048 output channels) behind a 3×3
stride-1 stem without max pooling, so a 32×32 input ends at 4×4; global average pooling and ``linear``. Attribute
names (``conv1``, ``bn1``, ``layer1..4``, ``shortcut``, ``linear``) equal those of RepDistiller / mdistiller,
which differ from torchvision's (``downsample``, ``fc``): the two do not share checkpoints.

Paper: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1, 50-layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._init import init_weights

__all__ = ["CifarResNetBottleneck", "resnet50_cifar"]


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        self.relu = nn.ReLU()  # a module, so that a hook reads its input: the block's pre-activation (OFD)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNetBottleneck(nn.Module):
    """Four-stage bottleneck ResNet with a CIFAR stem.

    Args:
        num_blocks: bottleneck blocks in each of the four stages.
        num_classes: number of output classes.

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 100) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise InvalidArgumentError(f"Expected `num_blocks` to hold 4 entries, but got {list(num_blocks)}.")
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True), start=1):
            stride = 1 if i == 1 else 2
            layers = [Bottleneck(in_planes, planes, stride)]
            in_planes = planes * Bottleneck.expansion
            layers += [Bottleneck(in_planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def resnet50_cifar(num_classes: int = 100) -> CifarResNetBottleneck:
    """ResNet-50 with a CIFAR stem (RepDistiller's ``ResNet50``; 23.71 M parameters at 100 classes)."""
    return CifarResNetBottleneck((3, 4, 6, 3), num_classes)
