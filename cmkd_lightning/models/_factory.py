"""The model zoo's front door: one plain dict from name to constructor, ``create_model`` and ``list_models``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.models import imagenet
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from cmkd_lightning.models.mobilenetv1 import mobilenetv1
from cmkd_lightning.models.mobilenetv2 import mobilenetv2_half
from cmkd_lightning.models.resnet50_cifar import resnet50_cifar
from cmkd_lightning.models.resnet_cifar import (
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from cmkd_lightning.models.shufflenetv1 import shufflenetv1
from cmkd_lightning.models.shufflenetv2 import shufflenetv2
from cmkd_lightning.models.vgg import vgg8, vgg11, vgg13, vgg16, vgg19
from cmkd_lightning.models.wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = ["MODELS", "MODEL_ALIASES", "create_model", "freeze", "list_models", "model_aliases", "resolve_model_name"]

# The registry: canonical names, all lower case with `_` between parts (the style of torchvision and timm). The
# community's spellings (RepDistiller's `MobileNetV2`, `ShuffleV1`, `ResNet50`, ...) are aliases (`MODEL_ALIASES`).
# Every constructor takes `num_classes` as a keyword.
MODELS: dict[str, Callable[..., nn.Module]] = {
    # CIFAR-100 (32×32 inputs)
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "mobilenetv2": mobilenetv2_half,
    "shufflenetv1": shufflenetv1,
    "shufflenetv2": shufflenetv2,
    "resnet50_cifar": resnet50_cifar,
    # ImageNet (224×224 inputs)
    "resnet18": imagenet.resnet18,
    "resnet34": imagenet.resnet34,
    "resnet50": imagenet.resnet50,
    "mobilenetv1": mobilenetv1,
    # Composed UCI digits (1 x 8 x 8k inputs), the offline quickstart data
    "digits_teacher": digits_teacher,
    "digits_student": digits_student,
}

# Spellings of the reference repositories (RepDistiller's and mdistiller's model keys and constructor names),
# alias -> canonical name. An exact alias is resolved as is, so "ResNet50" is the CIFAR ResNet-50 even though
# "resnet50" (torchvision's) differs from it only by case.
MODEL_ALIASES: dict[str, str] = {
    "MobileNetV2": "mobilenetv2",
    "mobile_half": "mobilenetv2",
    "ShuffleV1": "shufflenetv1",
    "ShuffleV2": "shufflenetv2",
    "ResNet50": "resnet50_cifar",
    "MobileNetV1": "mobilenetv1",
    "vgg8_bn": "vgg8",
    "vgg11_bn": "vgg11",
    "vgg13_bn": "vgg13",
    "vgg16_bn": "vgg16",
    "vgg19_bn": "vgg19",
}


def list_models() -> list[str]:
    """Return the canonical model names (CIFAR models first, then ImageNet ones); aliases: :func:`model_aliases`.

    Example:
        >>> "resnet32x4" in list_models() and "mobilenetv1" in list_models() and "MobileNetV2" not in list_models()
        True
    """
    return list(MODELS)


def model_aliases() -> dict[str, list[str]]:
    """Return ``{canonical name: [aliases]}`` for the names that have aliases (the community's spellings).

    Example:
        >>> model_aliases()["mobilenetv2"]
        ['MobileNetV2', 'mobile_half']
    """
    out: dict[str, list[str]] = {}
    for alias, target in MODEL_ALIASES.items():
        out.setdefault(target, []).append(alias)
    return out


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def resolve_model_name(name: str) -> str:
    """Map a user-supplied model name to its canonical name.

    An exact canonical name or alias (:data:`MODEL_ALIASES`: ``MobileNetV2``, ``ShuffleV1``, ``ResNet50``,
    ``mobile_half``, ``vgg13_bn``, ...) wins. Otherwise the match ignores case and treats ``-`` as ``_``.
    ``"ResNet50"`` (the CIFAR ResNet-50 of RepDistiller, canonical ``resnet50_cifar``) and ``"resnet50"``
    (torchvision's ImageNet ResNet-50) differ only by case, so another spelling of them is ambiguous and rejected.

    Args:
        name: model name, e.g. ``"resnet32x4"``, ``"ShuffleV1"``, ``"WRN-40-2"``.

    Returns:
        The key of :data:`MODELS`.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if the name is unknown (the message lists the valid names) or ambiguous.

    Example:
        >>> resolve_model_name("ShuffleV1"), resolve_model_name("WRN-40-2"), resolve_model_name("MobileNetV2")
        ('shufflenetv1', 'wrn_40_2', 'mobilenetv2')
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"Expected `name` to be a str, but got {type(name).__name__}.")
    if name in MODELS:
        return name
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    key = _normalise(name)
    matches = {registered for registered in MODELS if _normalise(registered) == key}
    matches |= {target for alias, target in MODEL_ALIASES.items() if _normalise(alias) == key}
    if len(matches) == 1:
        return matches.pop()
    if len(matches) > 1:
        raise InvalidArgumentError(
            f"Expected `name` to match exactly one model, but {name!r} matches {sorted(matches)} when case is "
            "ignored; pass the exact name ('resnet50_cifar' or 'ResNet50' is the CIFAR ResNet-50, 'resnet50' "
            "torchvision's)."
        )
    raise InvalidArgumentError(
        f"Expected `name` to be one of {list_models()} or an alias {sorted(MODEL_ALIASES)} (case-insensitive), "
        f"but got {name!r}."
    )


def create_model(
    name: str,
    num_classes: int = 100,
    checkpoint_path: str | os.PathLike[str] | None = None,
    part: Literal["student", "teacher"] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model of the zoo by name, optionally with the weights of a checkpoint file.

    CIFAR models expect 32×32 inputs and keep the state_dict layout of RepDistiller / mdistiller, so the
    community's ``<name>_vanilla/ckpt_epoch_240.pth`` teachers load with
    :func:`cmkd_lightning.checkpoint.load_weights`. ImageNet models (``resnet18``, ``resnet34``, ``resnet50``,
    ``MobileNetV1``) expect 224×224 inputs; pass ``num_classes=1000``. Every model's forward returns logits
    ``(N, num_classes)``; use :func:`~cmkd_lightning.models.extract_features` for the penultimate features.

    Args:
        name: a name from :func:`list_models` (see :func:`resolve_model_name` for accepted spellings).
        num_classes: number of output classes, an int >= 2.
        checkpoint_path: weights to load strictly (the formats of :func:`cmkd_lightning.checkpoint.load_weights`:
            RepDistiller ``{'model': ...}``, Lightning checkpoints, plain state_dicts).
        part: ``"student"`` or ``"teacher"``, for a distillation checkpoint that holds both.
        **kwargs: extra constructor arguments; the torchvision ResNets accept ``pretrained: bool`` (torchvision's
            ``IMAGENET1K_V1`` weights) and ``weights: str`` (e.g. ``"IMAGENET1K_V2"``). No weights by default.

    Returns:
        The freshly initialised (or torchvision-pretrained, or checkpoint-loaded) model.

    Raises:
        TypeError: if ``num_classes`` is not an int or a keyword argument is not accepted by the model.
        ValueError: if ``num_classes < 2`` or the name is unknown.

    Example:
        >>> import torch
        >>> model = create_model("resnet8x4", num_classes=100).eval()
        >>> tuple(model(torch.randn(2, 3, 32, 32)).shape)
        (2, 100)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ArgumentTypeError(f"Expected `num_classes` to be an int >= 2, but got {type(num_classes).__name__}.")
    if num_classes < 2:
        raise InvalidArgumentError(f"Expected `num_classes` to be an int >= 2, but got {num_classes}.")
    registered = resolve_model_name(name)
    constructor = MODELS[registered]
    accepted = [p for p in inspect.signature(constructor).parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ArgumentTypeError(
            f"Expected keyword arguments of model {registered!r} to be among {accepted}, but got {unknown}."
        )
    model = constructor(num_classes=num_classes, **kwargs)
    if checkpoint_path is not None:
        from cmkd_lightning.checkpoint import load_weights

        load_weights(model, checkpoint_path, part=part)
    elif part is not None:
        raise InvalidArgumentError(f"Expected a `checkpoint_path` to read part={part!r} from, but got None.")
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Freeze ``model`` in place for use as a teacher: no parameter requires grad, eval mode; returns it.

    Example:
        >>> teacher = freeze(create_model("resnet8", num_classes=10))
        >>> teacher.training, any(p.requires_grad for p in teacher.parameters())
        (False, False)
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    return model.requires_grad_(False).eval()
