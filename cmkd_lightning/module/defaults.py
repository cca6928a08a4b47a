"""The defaults of :class:`~cmkd_lightning.DistillationModule` that depend on other arguments (docs/DEFAULTS.md).

Loss and cross-entropy weights follow the losses, ``optimizer=None`` is the CIFAR-100 recipe, and the default
schedule (:class:`~cmkd_lightning.schedules.StepOrCosine`) follows the run's length. Each rule is a plain
function of the arguments, so it can be tested and documented once; an explicit value always wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import MultiStepLR

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.module import records as _records
from cmkd_lightning.schedules import RunLengthScheduler, StepOrCosine

# `optimizer=None`: the CIFAR-100 recipe of the paper and its reference repositories.
DEFAULT_OPTIMIZER: dict[str, Any] = {
    "class_path": "torch.optim.SGD",
    "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
}


def resolve_losses(
    losses: Any, loss_weights: Sequence[float] | None, ce_weight: float | None, has_teacher: bool
) -> tuple[list[DistillationLoss], list[float], float]:
    """``losses`` built and checked (objects or ``class_path`` configs), with their effective weights."""
    if losses is None:
        losses = []
    elif isinstance(losses, (DistillationLoss, Mapping)):
        losses = [losses]
    losses = [_records.build_loss(loss, f"losses[{i}]") for i, loss in enumerate(losses)]
    for i, loss in enumerate(losses):
        if not isinstance(loss, DistillationLoss):
            raise ArgumentTypeError(
                f"Expected `losses[{i}]` to be a DistillationLoss (e.g. cmkd_lightning.losses.CMKDLoss), "
                f"but got {type(loss).__name__}."
            )
    weights = loss_weights_for(losses, loss_weights)
    if len(weights) != len(losses):
        raise InvalidArgumentError(
            f"Expected `loss_weights` to have one weight per loss ({len(losses)}), but got {len(weights)}."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise InvalidArgumentError(f"Expected `loss_weights` to be finite numbers >= 0, but got {weights}.")
    ce = ce_weight_for(losses, ce_weight)
    if not math.isfinite(ce) or ce < 0:
        raise InvalidArgumentError(f"Expected `ce_weight` to be a finite number >= 0, but got {ce!r}.")
    if losses and not has_teacher:
        raise InvalidArgumentError(
            f"Expected a `teacher` when distillation `losses` are given, but got teacher=None and "
            f"{len(losses)} loss(es). Drop `losses` to train with cross-entropy alone."
        )
    if has_teacher and not losses and ce == 0:
        raise InvalidArgumentError("Expected `losses` or `ce_weight > 0`: with neither there is nothing to train.")
    return losses, weights, ce


def loss_weights_for(losses: Sequence[DistillationLoss], loss_weights: Sequence[float] | None) -> list[float]:
    """``loss_weights`` as floats, or each loss's ``recommended_weight`` when it is ``None``."""
    if loss_weights is None:
        return [float(loss.recommended_weight) for loss in losses]
    return [float(w) for w in loss_weights]


def ce_weight_for(losses: Sequence[DistillationLoss], ce_weight: float | None) -> float:
    """``ce_weight``, or the cross-entropy weight the losses recommend when it is ``None``.

    Losses whose ``recommended_ce_weight`` is ``None`` have no opinion. Without losses, or when none has an
    opinion, the weight is 1; when the others disagree it is 1 with a warning that asks for an explicit value.
    """
    if ce_weight is not None:
        return float(ce_weight)
    opinions = {type(loss).__name__: loss.recommended_ce_weight for loss in losses}
    values = {float(v) for v in opinions.values() if v is not None}
    if len(values) == 1:
        return values.pop()
    if len(values) > 1:
        listed = ", ".join(f"{name}: {v:g}" for name, v in opinions.items() if v is not None)
        rank_zero_warn(
            f"The losses recommend different cross-entropy weights ({listed}), so `ce_weight` defaults to 1.0; "
            "pass `ce_weight` to choose."
        )
    return 1.0


def unique_names(losses: Sequence[DistillationLoss]) -> list[str]:
    """Each loss's ``name``, with ``_1``, ``_2``, ... appended to repeats (the logged key prefixes)."""
    names: list[str] = []
    for loss in losses:
        name, k = loss.name, 1
        while name in names:
            name, k = f"{loss.name}_{k}", k + 1
        names.append(name)
    return names


def announce_schedule(scheduler: Any, max_epochs: int | None) -> None:
    """Give a run-length schedule the run's length and say what it does; warn about unreachable milestones.

    :class:`~cmkd_lightning.schedules.StepOrCosine` (the default) announces its choice at info level; a
    ``MultiStepLR`` (or ``StepOrCosine`` told to keep its milestones) whose milestones reach ``max_epochs`` warns
    with the fix. ``max_epochs`` ``None``/``-1`` means unknown (a ``max_steps`` run).
    """
    known = max_epochs is not None and max_epochs > 0
    if isinstance(scheduler, RunLengthScheduler) and scheduler.max_epochs is None and known:
        scheduler.max_epochs = max_epochs
    if isinstance(scheduler, StepOrCosine):
        shown = tuple(scheduler.milestones)
        if scheduler.uses_milestones:
            rank_zero_info(f"lr_scheduler StepOrCosine: step decay x{scheduler.gamma:g} at epochs {shown}.")
        else:
            rank_zero_info(
                f"lr_scheduler StepOrCosine: milestones {shown} do not all fall within max_epochs="
                f"{scheduler.max_epochs}, so the learning rate follows a cosine over the {scheduler.max_epochs} "
                "epochs; pass milestones within the run (or torch.optim.lr_scheduler.MultiStepLR) for step decay."
            )
        return
    if not (isinstance(scheduler, MultiStepLR) and known):
        return
    shown = tuple(sorted(scheduler.milestones.elements()))
    late = tuple(m for m in shown if m >= max_epochs)
    if late and len(late) == len(shown):
        rank_zero_warn(
            f"MultiStepLR milestones {shown} are all >= max_epochs={max_epochs}: the learning rate never decays; "
            "use cmkd_lightning.schedules.StepOrCosine (the default) or a cosine, or milestones within the run."
        )
    elif late:
        rank_zero_warn(
            f"MultiStepLR milestones {late} are >= max_epochs={max_epochs} and never take effect; pass milestones "
            "within the run or use cmkd_lightning.schedules.StepOrCosine."
        )
