"""The networks of :class:`~cmkd_lightning.DistillationModule`: built from zoo names or modules, checked, loaded."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError, UsageError


class Features(NamedTuple):
    """Features of a step.

    ``student`` / ``teacher``: the penultimate features (``capture_features = True``), ``(N, D_s)`` and ``(N, D_t)``
    or ``None``. ``student_layers`` / ``teacher_layers``: the intermediate features the feature losses asked for,
    keyed by layer spec (:func:`~cmkd_lightning.models.extract_named_features`), or ``None``.
    """

    student: Tensor | None
    teacher: Tensor | None
    student_layers: dict[str, Tensor] | None = None
    teacher_layers: dict[str, Tensor] | None = None


class FeatureLayers(NamedTuple):
    """The layer specs the feature losses read from each network (union over the losses)."""

    student: list[str]
    teacher: list[str]


def build_feature_losses(
    losses: Sequence[nn.Module], student: nn.Module, teacher: nn.Module | None, teacher_cache: Any
) -> FeatureLayers | None:
    """Build the connectors of every feature loss from both networks; ``None`` when no loss reads features."""
    from cmkd_lightning.losses.feature import FeatureDistillationLoss

    feature_losses = [loss for loss in losses if isinstance(loss, FeatureDistillationLoss)]
    if not feature_losses:
        return None
    names = [type(loss).__name__ for loss in feature_losses]
    if teacher is None:
        raise InvalidArgumentError(f"Expected a `teacher` for the feature losses {names}, but got teacher=None.")
    if teacher_cache is not None:
        raise InvalidArgumentError(
            f"Expected no `teacher_cache` with the feature losses {names} (they read the teacher's intermediate "
            "features, which the cache does not hold), but got one."
        )
    for loss in feature_losses:
        loss.build(student, teacher)
    return FeatureLayers(
        list(dict.fromkeys(s for loss in feature_losses for s in loss.student_specs)),
        list(dict.fromkeys(s for loss in feature_losses for s in loss.teacher_specs)),
    )


def feature_inputs(loss: nn.Module, features: Features | None, batch: Any) -> dict[str, Any]:
    """The keyword arguments of a feature loss: its features (float32) and, for CRD, the batch's indices."""
    if features is None or features.student_layers is None or features.teacher_layers is None:
        raise UsageError(f"Expected the step to have captured the features of {type(loss).__name__}, but it did not.")
    inputs: dict[str, Any] = {
        "student_features": [features.student_layers[s].float() for s in loss.student_specs],
        "teacher_features": [features.teacher_layers[s].detach().float() for s in loss.teacher_specs],
    }
    if loss.requires_indices and isinstance(batch, (list, tuple)):
        inputs["indices"] = batch[2] if len(batch) > 2 else None
        inputs["contrast_indices"] = batch[3] if len(batch) > 3 else None
    return inputs


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type``; nothing for devices without autocast (e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def build(spec: Any, role: str, num_classes: int | None, checkpoint: str | None, part: Any = None) -> nn.Module | None:
    """A zoo name or ``nn.Module`` (or ``None``), with ``checkpoint``'s weights loaded strictly when given."""
    from cmkd_lightning.checkpoint import load_weights
    from cmkd_lightning.models import create_model

    if spec is None:
        if checkpoint is not None:
            raise InvalidArgumentError(f"Expected a `{role}` to load `{role}_checkpoint` into, but got {role}=None.")
        return None
    if isinstance(spec, str):
        if num_classes is None:
            raise InvalidArgumentError(
                f"Expected `num_classes` to be set when `{role}` is a model-zoo name ({spec!r}), but got None."
            )
        return create_model(spec, num_classes=num_classes, checkpoint_path=checkpoint, part=part)
    if not isinstance(spec, nn.Module):
        raise ArgumentTypeError(
            f"Expected `{role}` to be an nn.Module or a model-zoo name, but got {type(spec).__name__}."
        )
    return spec if checkpoint is None else load_weights(spec, checkpoint, part=part)


def classifier_classes(model: nn.Module) -> int | None:
    """Outputs of ``model``'s final linear layer, or ``None`` when it has none the zoo's rules find."""
    from cmkd_lightning.models import get_classifier

    try:
        return get_classifier(model).out_features
    except (ValueError, TypeError, AttributeError):
        return None


def resolve_num_classes(student: nn.Module, teacher: nn.Module | None, num_classes: int | None) -> int:
    """``num_classes`` (inferred from the student's classifier when ``None``), checked against both classifiers."""
    if num_classes is None:
        num_classes = classifier_classes(student)
        if num_classes is None:
            raise InvalidArgumentError(
                "Expected `num_classes` (the student has no final nn.Linear to infer it from), but got None."
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidArgumentError(f"Expected `num_classes` to be an integer >= 2, but got {num_classes!r}.")
    for role, model in (("student", student), ("teacher", teacher)):
        classes = None if model is None else classifier_classes(model)
        if classes is not None and classes != num_classes:
            raise InvalidArgumentError(
                f"Expected the {role}'s classifier to output `num_classes` = {num_classes} classes, "
                f"but its final linear layer has {classes} outputs."
            )
    return num_classes


def check_logits(logits: Tensor, role: str, targets: Tensor, num_classes: int) -> None:
    """Shape checks only (no device read): ``(N, num_classes)`` logits, one row per target."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise InvalidArgumentError(
            f"Expected the {role} to output logits of shape (N, {num_classes}) (`num_classes`), "
            f"but got {tuple(logits.shape)}."
        )
    if logits.shape[0] != targets.shape[0]:
        raise InvalidArgumentError(
            f"Expected as many {role} logits as targets, but got {logits.shape[0]} and {targets.shape[0]}."
        )


def prepare(networks: list[nn.Module | None], channels_last: bool, compile: bool) -> None:
    """Channels-last memory format and ``torch.compile`` (in place: state_dict keys unchanged), when asked."""
    for network in networks:
        if network is not None and channels_last:
            network.to(memory_format=torch.channels_last)
        if network is not None and compile:
            network.compile()
