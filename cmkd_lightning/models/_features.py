"""Features without changing a model's state_dict: the classifier's input, and named intermediate features.

Named features are read by forward hooks during one ordinary forward pass (removed afterwards), so a model's
logits, parameters and cost are unchanged when no feature is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError, UsageError

__all__ = [
    "CLASSIFIER_ATTRIBUTES",
    "extract_features",
    "extract_named_features",
    "feature_hooks",
    "feature_layers",
    "get_classifier",
    "margin_layers",
]

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
        raise ArgumentTypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    for name in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise InvalidArgumentError(
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
        raise UsageError(
            f"Expected the classifier of `model` ({type(model).__name__}) to run during forward, but it was not called."
        )
    return captured[-1], logits


_KINDS = ("output", "input", "relu", "copy")


def _parse(spec: str) -> tuple[str, str]:
    path, _, kind = spec.partition(":")
    kind = kind or "output"
    if kind not in _KINDS:
        raise InvalidArgumentError(
            f"Expected the layer spec {spec!r} to end in one of {[':' + k for k in _KINDS]}, but got {kind!r}."
        )
    return path, kind


def extract_named_features(
    model: nn.Module, x: Tensor, layers: Mapping[str, str] | list[str] | tuple[str, ...]
) -> tuple[dict[str, Tensor], Tensor]:
    """Run ``model`` on ``x`` and return named intermediate features together with the logits.

    A layer spec is ``"<module path>"`` (the module's output, e.g. ``"layer2"``), ``"<path>:input"`` (its first
    input, e.g. ``"layer1.1.relu:input"``: the pre-activation), ``"<path>:relu"`` (the ReLU of its output) or
    ``"<path>:copy"`` (a copy of its output, for an output that an in-place operation overwrites afterwards).
    When a module runs several times in one pass, the last call counts (torchvision's blocks call one ``relu``
    twice, the second time on the pre-activation). Inputs of in-place modules are copied before they run.
    Gradients flow through every feature; the hooks are removed afterwards.

    Args:
        model: any network whose forward returns logits.
        x: input batch, e.g. ``(N, 3, 32, 32)``.
        layers: ``{feature name: spec}``, or a list of specs (each then named by itself). Zoo models name their
            stages in :func:`feature_layers`.

    Returns:
        ``(features, logits)``: ``{name: tensor}`` in the order of ``layers``, and ``(N, C)``.

    Raises:
        ValueError: for a path that names no submodule, or a module that did not run.

    Example:
        >>> import torch
        >>> from cmkd_lightning.models import create_model
        >>> model = create_model("resnet8x4", num_classes=100).eval()
        >>> feats, logits = extract_named_features(model, torch.randn(2, 3, 32, 32), feature_layers(model))
        >>> {name: tuple(f.shape[1:]) for name, f in feats.items() if name.startswith("stage")}["stage3"]
        (256, 8, 8)
    """
    with feature_hooks(model, layers) as features:
        logits = model(x)
    return features, logits


@contextlib.contextmanager
def feature_hooks(
    model: nn.Module, layers: Mapping[str, str] | list[str] | tuple[str, ...]
) -> Iterator[dict[str, Tensor]]:
    """Hooks on ``model`` that fill the yielded dict with the named features when the block's forward passes end.

    The context-manager form of :func:`extract_named_features` (same layer specs), for code that runs the
    forward pass itself. The dict is filled on exit; the hooks are removed on exit.
    """
    named = dict(layers) if isinstance(layers, Mapping) else {spec: spec for spec in layers}
    modules = dict(model.named_modules())
    parsed = {name: _parse(spec) for name, spec in named.items()}
    for name, (path, _) in parsed.items():
        if path not in modules:
            raise InvalidArgumentError(
                f"Expected the layer spec {named[name]!r} (feature {name!r}) to name a submodule of "
                f"{type(model).__name__}, but it has no module {path!r}; "
                f"zoo stage names: {list(feature_layers(model)) if _has_stages(model) else 'none'}."
            )
    seen: dict[tuple[str, str], Tensor] = {}
    handles = []
    for path, kind in dict.fromkeys(parsed.values()):
        module = modules[path]
        if kind == "input":

            def _pre(_m: nn.Module, args: tuple[Any, ...], key: tuple[str, str] = (path, kind)) -> None:
                seen[key] = args[0].clone() if getattr(_m, "inplace", False) else args[0]

            handles.append(module.register_forward_pre_hook(_pre))
        else:

            def _post(_m: nn.Module, _a: tuple[Any, ...], out: Tensor, key: tuple[str, str] = (path, kind)) -> None:
                seen[key] = F.relu(out) if key[1] == "relu" else out.clone() if key[1] == "copy" else out

            handles.append(module.register_forward_hook(_post))
    features: dict[str, Tensor] = {}
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
    missing = [named[name] for name, key in parsed.items() if key not in seen]
    if missing:
        raise InvalidArgumentError(
            f"Expected the layers {missing} of {type(model).__name__} to run during forward, but they did not."
        )
    features.update({name: seen[key] for name, key in parsed.items()})


def _has_stages(model: nn.Module) -> bool:
    try:
        feature_layers(model)
    except (TypeError, ValueError):
        return False
    return True


def _last(sequential: nn.Module) -> int:
    return len(sequential) - 1  # type: ignore[arg-type]


def _zoo_layers(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """``(stage specs, {pre-activation name: BN path})`` of the zoo model classes (and torchvision ResNets)."""
    from cmkd_lightning.models.digits_cnn import DigitsCNN
    from cmkd_lightning.models.mobilenetv1 import MobileNetV1
    from cmkd_lightning.models.mobilenetv2 import MobileNetV2Cifar
    from cmkd_lightning.models.resnet50_cifar import CifarResNetBottleneck
    from cmkd_lightning.models.resnet_cifar import CifarResNet
    from cmkd_lightning.models.shufflenetv1 import ShuffleNetV1
    from cmkd_lightning.models.shufflenetv2 import ShuffleNetV2
    from cmkd_lightning.models.vgg import VGG
    from cmkd_lightning.models.wrn import WideResNet

    layers: dict[str, str] = {}
    bns: dict[str, str] = {}
    resnet_like = [(CifarResNet, 3, "bn2", "fc"), (CifarResNetBottleneck, 4, "bn3", "linear")]
    try:
        from torchvision.models import ResNet
        from torchvision.models.resnet import Bottleneck

        if isinstance(model, ResNet):
            resnet_like.append((ResNet, 4, "bn3" if isinstance(model.layer1[0], Bottleneck) else "bn2", "fc"))
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    for cls, stages, bn, head in resnet_like:
        if isinstance(model, cls):
            layers["stem"] = "layer1:input"
            for k in range(1, stages + 1):
                last = _last(getattr(model, f"layer{k}"))
                layers[f"stage{k}"] = f"layer{k}"
                layers[f"stage{k}_preact"] = f"layer{k}.{last}.relu:input"
                bns[f"stage{k}_preact"] = f"layer{k}.{last}.{bn}"
            layers["pooled"] = f"{head}:input"
            return layers, bns
    if isinstance(model, WideResNet):
        layers = {"stem": "conv1", "stage1": "block1", "stage2": "block2", "stage3": "block3"}
        bns = {"stage1_preact": "block2.layer.0.bn1", "stage2_preact": "block3.layer.0.bn1", "stage3_preact": "bn1"}
        layers.update(bns)
        layers["pooled"] = "fc:input"
        return layers, bns
    if isinstance(model, VGG):
        layers["stem"] = "block0:relu"
        for k in range(1, 5):
            layers[f"stage{k}"] = f"block{k}:relu"
            layers[f"stage{k}_preact"] = f"block{k}"
            bns[f"stage{k}_preact"] = f"block{k}.{_last(getattr(model, f'block{k}'))}"
        layers["pooled"] = "classifier:input"
        return layers, bns
    if isinstance(model, MobileNetV1):
        for k, index in enumerate((3, 5, 11, 13), start=1):
            block = model.model[index]
            layers[f"stage{k}"] = f"model.{index}"
            layers[f"stage{k}_preact"] = f"model.{index}.{_last(block) - 1}:copy"
            bns[f"stage{k}_preact"] = f"model.{index}.{_last(block) - 1}"
        layers["pooled"] = "fc:input"
        return layers, bns
    if isinstance(model, MobileNetV2Cifar):
        layers = {
            "stem": "conv1",
            "stage1": "blocks.1",
            "stage2": "blocks.2",
            "stage3": "blocks.4",
            "stage4": "blocks.6",
        }
        layers["pooled"] = "classifier:input"
        return layers, bns
    if isinstance(model, (ShuffleNetV1, ShuffleNetV2)):
        layers = {"stem": "layer1:input", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3"}
        if isinstance(model, ShuffleNetV1):
            for k in range(1, 4):
                last = _last(getattr(model, f"layer{k}"))
                layers[f"stage{k}_preact"] = f"layer{k}.{last}.relu:input"
        layers["pooled"] = "linear:input"
        return layers, bns
    if isinstance(model, DigitsCNN):
        relus = [i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
        ends = [i for i in relus if i + 1 == len(model.features) or isinstance(model.features[i + 1], nn.MaxPool2d)]
        layers = {f"stage{k}": f"features.{i}" for k, i in enumerate(ends, start=1)}
        layers["pooled"] = "pool"
        return layers, bns
    raise ArgumentTypeError(
        f"Expected a model of the zoo or a torchvision ResNet to name its stages, but got {type(model).__name__}: "
        "pass module paths instead (e.g. 'layer2', 'layer2.1.relu:input')."
    )


def feature_layers(model: nn.Module) -> dict[str, str]:
    """The named stage features of a zoo model (or torchvision ResNet), as layer specs.

    Names: ``"stem"``, ``"stage1"``, ``"stage2"``, ... (each stage's output, after its activation),
    ``"stage<k>_preact"`` (before the activation, where the model has one: OFD and ReviewKD read these) and
    ``"pooled"`` (the classifier's input). They follow the ``feats`` / ``preact_feats`` / ``pooled_feat`` of the
    reference code (mdistiller): ``stage<k>`` is its ``feats[k]``.

    Args:
        model: a model built by :func:`~cmkd_lightning.models.create_model` or a torchvision ResNet.

    Returns:
        ``{name: spec}`` for :func:`extract_named_features`.

    Raises:
        TypeError: for another model (name its layers by module path instead).

    Example:
        >>> from cmkd_lightning.models import create_model
        >>> feature_layers(create_model("resnet20", num_classes=100))["stage3_preact"]
        'layer3.2.relu:input'
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    return _zoo_layers(model)[0]


def margin_layers(model: nn.Module) -> dict[str, str]:
    """``{pre-activation feature name: path of the BatchNorm whose statistics give OFD's margin}`` of a zoo model.

    Example:
        >>> from cmkd_lightning.models import create_model
        >>> margin_layers(create_model("wrn_40_2", num_classes=100))["stage3_preact"]
        'bn1'
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    return _zoo_layers(model)[1]
