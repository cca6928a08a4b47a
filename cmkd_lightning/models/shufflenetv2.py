r"""ShuffleNetV2 for CIFAR (``ShuffleV2``, net size 1: 116/232/464 channels, 1024 at the end).

A 1×1 stem with 24 channels (no stride, no max pooling, so 32×32 inputs end at 4×4), three stages each made of one
down-sampling unit followed by 3, 7 and 3 basic units, a 1×1 conv ``conv2`` to 1024 channels, global average
pooling and ``linear``. A basic unit splits the channels in half, transforms one half with 1×1 - 3×3 depthwise -
1×1 and concatenates it back before a channel shuffle with 2 groups; a down-sampling unit has two strided
branches (4, 8 and 4 units per stage, as in the paper's table). Attribute names (``conv1..5``, ``bn1..5``,
``layer1..3``, ``conv2``, ``bn2``, ``linear``) equal those of RepDistiller / mdistiller.

Paper: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._layers import channel_shuffle

__all__ = ["ShuffleNetV2", "shufflenetv2"]


class BasicUnit(nn.Module):
    """Channel split in halves; one half goes through 1×1-BN-ReLU, 3×3 dw-BN, 1×1-BN-ReLU; concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.half = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        kept, branch = x[:, : self.half], x[:, self.half :]
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)))
        return channel_shuffle(torch.cat([kept, branch], dim=1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches (3×3 dw - 1×1, and 1×1 - 3×3 dw - 1×1), each to half the output channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32×32 inputs.

    Args:
        num_classes: number of output classes.
        out_channels: channels of the three stages and of the final 1×1 conv.
        num_blocks: basic units per stage (each stage also has one down-sampling unit).

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        if len(out_channels) != 4 or len(num_blocks) != 3:
            raise InvalidArgumentError(
                "Expected `out_channels` to hold 4 and `num_blocks` 3 entries, but got "
                f"{list(out_channels)} and {list(num_blocks)}."
            )
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for i in range(3):
            units: list[nn.Module] = [DownUnit(in_channels, out_channels[i])]
            units += [BasicUnit(out_channels[i]) for _ in range(num_blocks[i])]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            in_channels = out_channels[i]
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)  # PyTorch's default init, as in the reference

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNetV2 at net size 1 (RepDistiller's ``ShuffleV2``; 1.36 M parameters at 100 classes)."""
    return ShuffleNetV2(num_classes)
