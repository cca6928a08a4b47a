r"""MobileNetV2 for CIFAR as used by the CIFAR-100 KD benchmark (RepDistiller's ``mobile_half``).

The width-0.5 network with expansion ratio 6: a stride-2 3×3 stem, seven stages of inverted residual blocks
(``t, c, n, s`` = ``1,16,1,1 / 6,24,2,1 / 6,32,3,2 / 6,64,4,2 / 6,96,3,1 / 6,160,3,2 / 6,320,1,1`` with channels
scaled by the width), a 1×1 conv to 1280 channels, global average pooling and ``classifier.0`` (a linear layer
inside a Sequential). Unlike torchvision's MobileNetV2, the first stage keeps its 1×1 expansion convolution even
at ``t = 1``, and stage 2 runs at stride 1 (so a 32×32 input ends at 2×2). Attribute names (``conv1``,
``blocks.i.j.conv.k``, ``conv2``, ``classifier.0``) equal those of RepDistiller / mdistiller.

Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018; the CIFAR variant is
from Tian et al., "Contrastive Representation Distillation", ICLR 2020.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._init import init_weights

__all__ = ["MobileNetV2Cifar", "mobilenetv2_half"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expansion, 3×3 depthwise, linear 1×1 projection; identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32×32 inputs with width multiplier and expansion ratio.

    Args:
        num_classes: number of output classes.
        width_mult: channel multiplier of the stem and the stages (0.5 for the benchmark student).
        expand_ratio: expansion ratio ``t`` of stages 2–7 (stage 1 always uses 1).

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expand_ratio: int = 6) -> None:
        super().__init__()
        if not width_mult > 0:
            raise InvalidArgumentError(f"Expected `width_mult` to be > 0, but got {width_mult}.")
        settings = [
            (1, 16, 1, 1),
            (expand_ratio, 24, 2, 1),
            (expand_ratio, 32, 3, 2),
            (expand_ratio, 64, 4, 2),
            (expand_ratio, 96, 3, 1),
            (expand_ratio, 160, 3, 2),
            (expand_ratio, 320, 1, 1),
        ]
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_channels, last_channels, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenetv2_half(num_classes: int = 100) -> MobileNetV2Cifar:
    """MobileNetV2 at width 0.5, expansion 6 (RepDistiller's ``mobile_half``; 0.81 M parameters at 100 classes)."""
    return MobileNetV2Cifar(num_classes, width_mult=0.5, expand_ratio=6)
