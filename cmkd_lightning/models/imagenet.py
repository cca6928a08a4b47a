r"""ImageNet ResNets from torchvision (resnet18, resnet34, resnet50), optionally with torchvision's weights.

The ImageNet KD benchmarks (CRD, DKD, DIST, CMKD) use torchvision's pretrained ResNet-34 and ResNet-50 as
teachers; their state_dict keys are torchvision's (``conv1``, ``bn1``, ``layer1..4``, ``downsample``, ``fc``).
No weights are downloaded unless asked for: ``pretrained=True`` selects ``IMAGENET1K_V1`` (the weights the papers
report, e.g. 73.31 % Top-1 for ResNet-34 and 76.13 % for ResNet-50), and ``weights`` names any torchvision weight
enum member (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``). Downloading needs network access; files
already in torch hub's cache are reused.

Paper: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torchvision.models import ResNet

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["resnet18", "resnet34", "resnet50"]


def _build(
    arch: str, num_classes: int, pretrained: bool, weights: str | torchvision.models.WeightsEnum | None
) -> ResNet:
    if not isinstance(pretrained, bool):
        raise ArgumentTypeError(f"Expected `pretrained` to be a bool, but got {type(pretrained).__name__}.")
    if pretrained and weights is not None:
        raise InvalidArgumentError(
            f"Expected either `pretrained=True` or `weights`, but got both (weights={weights!r})."
        )
    if pretrained:
        weights = "IMAGENET1K_V1"
    if weights is not None:
        enum = torchvision.models.get_model_weights(arch)
        if isinstance(weights, str):
            valid = list(enum.__members__)
            if weights not in valid:
                raise InvalidArgumentError(f"Expected `weights` for {arch} to be one of {valid}, but got {weights!r}.")
            weights = enum[weights]
        elif not isinstance(weights, enum):
            raise ArgumentTypeError(f"Expected `weights` to be a {enum.__name__} or its name, but got {weights!r}.")
        n_weights = len(weights.meta["categories"])
        if num_classes != n_weights:
            raise InvalidArgumentError(
                f"Expected `num_classes` to be {n_weights} with pretrained {arch} weights, but got {num_classes}."
            )
    builder: Callable[..., ResNet] = getattr(torchvision.models, arch)
    return builder(weights=weights, num_classes=num_classes)


def resnet18(
    num_classes: int = 1000, pretrained: bool = False, weights: str | torchvision.models.WeightsEnum | None = None
) -> ResNet:
    """Torchvision ResNet-18 (11.69 M parameters at 1000 classes).

    Args:
        num_classes: number of output classes (must be 1000 with pretrained weights).
        pretrained: load torchvision's ``IMAGENET1K_V1`` weights (needs network or a cached file).
        weights: name (or enum member) of torchvision weights; exclusive with ``pretrained``.
    """
    return _build("resnet18", num_classes, pretrained, weights)


def resnet34(
    num_classes: int = 1000, pretrained: bool = False, weights: str | torchvision.models.WeightsEnum | None = None
) -> ResNet:
    """Torchvision ResNet-34 (21.80 M parameters at 1000 classes). Arguments as in :func:`resnet18`."""
    return _build("resnet34", num_classes, pretrained, weights)


def resnet50(
    num_classes: int = 1000, pretrained: bool = False, weights: str | torchvision.models.WeightsEnum | None = None
) -> ResNet:
    """Torchvision ResNet-50 (25.56 M parameters at 1000 classes). Arguments as in :func:`resnet18`."""
    return _build("resnet50", num_classes, pretrained, weights)
