r"""MobileNetV1 for ImageNet with the layout used by ImageNet KD benchmarks (mdistiller / torchdistill / OFD).

``model`` is a Sequential of a stride-2 3×3 conv-BN-ReLU stem (32 channels), 13 depthwise-separable blocks
(3×3 depthwise conv-BN-ReLU then 1×1 conv-BN-ReLU; channels 64, 128, 128, 256, 256, 512 ×6, 1024, 1024 with
stride 2 at blocks 2, 4, 6 and 12) and a global average pool; ``fc`` maps 1024 features to the classes. Keys are
``model.<i>.<j>.*`` and ``fc.*`` as in those repositories (4.23 M parameters at 1000 classes). The reference pools
with ``AvgPool2d(7)``; this module pools adaptively, which is the same on 224×224 inputs and also works on
smaller ones.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
arXiv:1704.04861, 2017 (Table 1).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MobileNetV1", "mobilenetv1"]

# (output channels, stride) of the 13 depthwise-separable blocks.
_DW_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0).

    Args:
        num_classes: number of output classes (1000 for ImageNet).

    Shape:
        Input ``(N, 3, H, W)`` (224×224 on ImageNet), output logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 2)]
        in_channels = 32
        for out_channels, stride in _DW_BLOCKS:
            layers.append(_conv_dw(in_channels, out_channels, stride))
            in_channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        return self.fc(self.model(x).flatten(1))


def mobilenetv1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNetV1 for ImageNet (4.23 M parameters at 1000 classes)."""
    return MobileNetV1(num_classes)
