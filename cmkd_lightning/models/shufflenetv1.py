r"""ShuffleNetV1 for CIFAR (``ShuffleV1``: 3 groups, 240/480/960 channels) with RepDistiller's layout.

A 1×1 stem with 24 channels (no stride, no max pooling, so 32×32 inputs end at 4×4), three stages of 4, 8 and 4
bottleneck units and a linear classifier ``linear``. Each unit is grouped 1×1 conv - channel shuffle - 3×3
depthwise conv - grouped 1×1 conv; the first unit of a stage has stride 2 and concatenates a 3×3 average-pooled
shortcut, so its own branch outputs ``out - in`` channels. The first 1×1 conv of the network is not grouped
because its input has only 24 channels. Attribute names (``conv1``, ``bn1``, ``layer1..3``, ``linear``) equal those
of RepDistiller / mdistiller.

Paper: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.models._layers import channel_shuffle

__all__ = ["ShuffleNetV1", "shufflenetv1"]


class ShuffleUnit(nn.Module):
    """ShuffleNet unit: add (stride 1) or concatenate (stride 2) with the shortcut, then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid_planes = out_planes // 4
        first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()  # a module, so that a hook reads its input: the unit's pre-activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            out = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        else:
            out = out + x
        return self.relu(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for 32×32 inputs.

    Args:
        num_classes: number of output classes.
        out_planes: output channels of the three stages.
        num_blocks: units per stage.
        groups: groups of the 1×1 convolutions.

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for i, (planes, blocks) in enumerate(zip(out_planes, num_blocks, strict=True), start=1):
            units = [ShuffleUnit(in_planes, planes - in_planes, 2, groups)]
            units += [ShuffleUnit(planes, planes, 1, groups) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*units))
            in_planes = planes
        self.linear = nn.Linear(in_planes, num_classes)  # PyTorch's default init, as in the reference

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def shufflenetv1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNetV1 with 3 groups (RepDistiller's ``ShuffleV1``; 0.95 M parameters at 100 classes)."""
    return ShuffleNetV1(num_classes)
