r"""VGG with batch norm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19) with RepDistiller's layout.

Five blocks ``block0..4`` of 3×3 conv(bias)-BN-ReLU layers (the last ReLU of each block is applied in
``forward``), 2×2 max pooling after blocks 0–2, global average pooling after block 4 and a single linear
``classifier`` on 512 features. On 32×32 inputs blocks 3 and 4 both run at 4×4 (no pooling between them), as in
the reference; a fourth pooling is applied only when the map entering it is larger than 4×4 (e.g. 64×64 inputs).
The registered names are the batch-norm variants (RepDistiller's ``vggX_bn``), which is what the community's
``vgg13_vanilla`` teacher was trained with.

Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
layout of Tian et al., "Contrastive Representation Distillation", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.models._init import init_weights

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Channels of the conv layers in each of the five blocks.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(channels: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    return nn.Sequential(*layers[:-1])  # the block's last ReLU runs in forward


class VGG(nn.Module):
    """VGG-BN with five conv blocks and a linear classifier.

    Args:
        config: channels of each conv layer, one tuple per block (five blocks, the last ending in 512).
        num_classes: number of output classes.

    Shape:
        Input ``(N, 3, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(config) != 5 or any(len(c) == 0 for c in config):
            raise InvalidArgumentError(f"Expected `config` to hold 5 non-empty blocks, but got {config}.")
        in_channels = 3
        for i, channels in enumerate(config):
            self.add_module(f"block{i}", _make_block(channels, in_channels))
            in_channels = channels[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, 3, H, W)``."""
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if x.shape[-1] > 4:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8 with batch norm (3.96 M parameters at 100 classes)."""
    return VGG(VGG_CONFIGS["vgg8"], num_classes)


def vgg11(num_classes: int = 100) -> VGG:
    """VGG-11 with batch norm (9.28 M parameters at 100 classes)."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13 with batch norm (9.46 M parameters at 100 classes)."""
    return VGG(VGG_CONFIGS["vgg13"], num_classes)


def vgg16(num_classes: int = 100) -> VGG:
    """VGG-16 with batch norm (14.77 M parameters at 100 classes)."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes)


def vgg19(num_classes: int = 100) -> VGG:
    """VGG-19 with batch norm (20.09 M parameters at 100 classes)."""
    return VGG(VGG_CONFIGS["vgg19"], num_classes)
