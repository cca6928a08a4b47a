"""The defaults of :class:`~cmkd_lightning.DistillationModule` that depend on other arguments (docs/DEFAULTS.md).

Loss and cross-entropy weights follow the losses, weight decay and momentum follow the optimiser, and the
``"auto"`` schedule follows the run's length. Each rule is a plain function of the arguments, so it can be tested
and documented once; an explicit value always wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.utilities import rank_zero_warn

from cmkd_lightning.losses.base import DistillationLoss

# Optimiser -> (default weight decay, default momentum). SGD: the CIFAR-100 recipe; AdamW: torch's own defaults.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float | None]] = {"sgd": (5e-4, 0.9), "adamw": (1e-2, None)}


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


def optimizer_args_for(
    optimizer: str, weight_decay: float | None, momentum: float | None, nesterov: bool
) -> tuple[float, float | None]:
    """Effective ``(weight_decay, momentum)`` of ``optimizer``; warns about SGD arguments given to AdamW."""
    default_decay, default_momentum = OPTIMIZER_DEFAULTS[optimizer]
    if optimizer == "adamw" and (momentum is not None or nesterov):
        given = [f"momentum={momentum}"] if momentum is not None else []
        given += ["nesterov=True"] if nesterov else []
        rank_zero_warn(
            f"`momentum` and `nesterov` are SGD arguments: optimizer='adamw' ignores {', '.join(given)} (AdamW uses "
            "its default betas). Drop them, or pass optimizer='sgd'."
        )
        momentum = None
    return (default_decay if weight_decay is None else float(weight_decay)), (
        default_momentum if momentum is None else float(momentum)
    )


def schedule_for(lr_schedule: str, milestones: Sequence[int], max_epochs: int | None) -> tuple[str, str | None]:
    """The schedule to build and the message that says why, for a run of ``max_epochs`` (``None``/``-1``: unknown).

    ``"auto"`` is ``"multistep"`` when every milestone falls within the run (or its length is unknown), otherwise
    ``"cosine"`` over ``max_epochs``. An explicit ``"multistep"`` with milestones at or beyond ``max_epochs`` is
    kept, with a warning (the second element starts with ``"warn:"``).
    """
    known = max_epochs is not None and max_epochs > 0
    late = tuple(m for m in milestones if known and m >= max_epochs)
    shown = tuple(milestones)
    if lr_schedule == "auto":
        if not late:
            return "multistep", f"lr_schedule='auto': step decay at lr_milestones {shown}."
        return "cosine", (
            f"lr_schedule='auto': lr_milestones {shown} do not all fall within max_epochs={max_epochs}, so the "
            f"learning rate follows a cosine over the {max_epochs} epochs; pass lr_schedule='multistep' with "
            "milestones within the run for step decay."
        )
    if lr_schedule == "multistep" and late:
        if len(late) == len(shown):
            return "multistep", (
                f"warn:lr_milestones {shown} are all >= max_epochs={max_epochs}: the learning rate never decays; "
                "pass lr_schedule='cosine' (or 'auto') or milestones within the run."
            )
        return "multistep", (
            f"warn:lr_milestones {late} are >= max_epochs={max_epochs} and never take effect; pass milestones "
            "within the run or lr_schedule='cosine'."
        )
    return lr_schedule, None
