"""Penultimate features without changing a model's state_dict: find its classifier and hook its input."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["CLASSIFIER_ATTRIBUTES", "extract_features", "get_classifier"]

# Attribute names under which zoo, torchvision and timm models keep their classification head.
CLASSIFIER_ATTRIBUTES = ("fc", "linear", "classifier", "head", "heads")


def get_classifier(model: nn.Module) -> nn.Linear:
    """Return the final linear layer of a classification model.

    Looks for the first of the attributes ``fc``, ``linear``, ``classifier``, ``head``, ``heads`` that the model
    has. If it is an :class:`~torch.nn.Linear` it is returned; if it is a container (``classifier =
    Sequential(Dropout, Linear)`` in torchvision's MobileNetV2, ``Sequential(Linear)`` in the CIFAR MobileNetV2),
    its last linear submodule is returned. This covers every model of :func:`~cmkd_lightning.models.list_models`
    and torchvision's classification models.

    Args:
        model: a classification network.

    Returns:
        The linear layer that maps penultimate features ``(N, D)`` to logits ``(N, C)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if no such attribute holds a linear layer.

    Example:
        >>> from cmkd_lightning.models import create_model
        >>> get_classifier(create_model("resnet8x4", num_classes=100))
        Linear(in_features=256, out_features=100, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    for name in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(
        f"Expected `model` ({type(model).__name__}) to keep its final nn.Linear under one of the attributes "
        f"{list(CLASSIFIER_ATTRIBUTES)}, but found none."
    )


def extract_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``x`` and return the classifier's input features together with the logits.

    A forward pre-hook on :func:`get_classifier`'s layer records its input during one ordinary forward pass; the
    hook is removed afterwards, so the model and its state_dict are unchanged. Gradients flow through both
    outputs, and the model's train/eval mode applies as usual (e.g. a dropout placed before the final linear
    layer is part of the features in training mode).

    Args:
        model: a classification network whose forward returns logits.
        x: input batch, e.g. ``(N, 3, 32, 32)``.

    Returns:
        ``(features, logits)`` with shapes ``(N, D)`` and ``(N, C)``.

    Raises:
        RuntimeError: if the classifier was not called during the forward pass.

    Example:
        >>> import torch
        >>> from cmkd_lightning.models import create_model
        >>> model = create_model("resnet8x4", num_classes=100).eval()
        >>> features, logits = extract_features(model, torch.randn(2, 3, 32, 32))
        >>> tuple(features.shape), tuple(logits.shape)
        ((2, 256), (2, 100))
    """
    classifier = get_classifier(model)
    captured: list[Tensor] = []

    def _record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])

    handle = classifier.register_forward_pre_hook(_record)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"Expected the classifier of `model` ({type(model).__name__}) to run during forward, but it was not called."
        )
    return captured[-1], logits
