"""The ``check_finite`` guard of :class:`~cmkd_lightning.DistillationModule`: one flag read per checked step."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError, LabelRangeError, NonFiniteError


def check_every(check_finite: Any) -> int:
    """``check_finite`` as a step interval: ``True`` -> 1 (every step), ``False``/``0`` -> never."""
    if not isinstance(check_finite, (bool, int)) or check_finite < 0:
        raise InvalidArgumentError(
            f"Expected `check_finite` to be a bool or an integer >= 0 (check every n-th step), but got "
            f"{check_finite!r}."
        )
    return int(check_finite)


def add_extra_terms(terms: dict[str, Tensor], extra: dict[str, Tensor], owner: str) -> dict[str, Tensor]:
    """Add a subclass's ``extra_losses`` to the total; each is kept under its own key (shape checks only)."""
    for key, value in extra.items():
        if key in terms:
            raise InvalidArgumentError(
                f"Expected the keys of `{owner}.extra_losses` to differ from the module's own {sorted(terms)}, "
                f"but got {key!r}."
            )
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise InvalidArgumentError(
                f"Expected `{owner}.extra_losses()[{key!r}]` to be a scalar tensor, but got {shape}."
            )
        terms["loss"] = terms["loss"] + value.float()
        terms[key] = value
    return terms


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``F.cross_entropy``, with a label outside ``[0, C)`` reported as :class:`LabelRangeError` (on CPU).

    On CUDA such a label stops the process with a device-side assertion before any Python code can see it.
    """
    try:
        return F.cross_entropy(logits, targets)
    except IndexError as err:
        num_classes = logits.shape[-1]
        low, high = int(targets.min()), int(targets.max())  # the failure path only: one read
        bad = high if high >= num_classes else low
        raise LabelRangeError(
            f"Expected every label in [0, {num_classes - 1}] (the model's num_classes = {num_classes}), but the batch "
            f"holds label {bad} (labels from {low} to {high}). The data's labels and `num_classes` disagree: give "
            "the model and the data module the data's class count, or fix the labels."
        ) from err


def where(stage: str, batch_idx: int, global_step: int, epoch: int) -> str:
    """The step a guard error names; ``epoch`` is Lightning's (from 0), named from 1 as the bar and summary do."""
    if stage == "train":
        return f"train global step {global_step} (epoch {epoch + 1})"
    return f"{stage} batch {batch_idx} (global step {global_step}, epoch {epoch + 1})"


def _finite(t: Tensor | None) -> bool:
    return t is None or not t.is_floating_point() or bool(torch.isfinite(t.detach()).all())


def stack_terms(terms: dict[str, Tensor]) -> Tensor:
    """The scalar loss terms as one float32 vector ``(K,)``, outside autograd."""
    with torch.no_grad():
        return torch.stack([t.reshape(()).float() for t in terms.values()])


def all_finite(values: Tensor, student_logits: Tensor) -> bool:
    """Whether a step's loss terms (stacked, ``(K,)``) and the student's logits are all finite: one read.

    The check is ``isfinite(sum(values) + sum(logits))`` (float32 sums): a NaN or Inf anywhere makes the sum
    non-finite. The converse can fail only by overflow of a finite sum beyond float32's range, which
    :func:`raise_if_not_finite` then tells apart (no error).
    """
    with torch.no_grad():
        return math.isfinite((values.sum() + student_logits.sum(dtype=torch.float32)).item())


def raise_if_not_finite(
    terms: dict[str, Tensor],
    stage: str,
    student_logits: Tensor,
    where: str,
    inputs: Any = None,
    teacher_logits: Tensor | None = None,
    first_step: bool = False,
) -> None:
    """Raise :class:`NonFiniteError` naming what is NaN/Inf and its likely cause; one flag read otherwise.

    Only on failure are the ``inputs`` and ``teacher_logits`` inspected, to tell bad data or a bad teacher (cache)
    from a diverging optimisation.
    """
    if all_finite(stack_terms(terms), student_logits):
        return
    after = (
        "Training stopped before the optimiser step, so the weights and the last saved checkpoint are intact."
        if stage == "train"
        else f"The weights reached {stage} non-finite or produce non-finite outputs on this batch."
    )
    if isinstance(inputs, Tensor) and not _finite(inputs):
        raise NonFiniteError(
            f"Non-finite input at {where}: the batch's images hold NaN/Inf, so every loss is NaN. {after} Fix the "
            "data (or its transforms); the learning rate is not the cause."
        )
    if not _finite(teacher_logits):
        raise NonFiniteError(
            f"Non-finite teacher logits at {where}: the teacher (or the teacher-logit cache it is read from) gives "
            f"NaN/Inf. {after} Check the teacher checkpoint, or rebuild the cache."
        )
    if not bool(torch.isfinite(student_logits.detach()).all()):
        raise NonFiniteError(
            f"Non-finite student logits at {where}: the student's forward pass produced NaN/Inf before any loss. "
            f"{after} Lower the learning rate or check the data."
        )
    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
    if not bad:  # a finite float64 term beyond float32's range: nothing is NaN/Inf
        return
    names = ", ".join(f"{stage}/{k}" for k in bad)
    if first_step:  # finite inputs, teacher and student before any update: the loss's own settings overflow
        raise NonFiniteError(
            f"Non-finite loss at {where}, before any update, with finite inputs and logits: {names} is NaN/Inf. "
            f"{after} "
            "The loss's settings overflow (e.g. an extreme temperature or weight); the learning rate is not the cause."
        )
    raise NonFiniteError(
        f"Non-finite loss at {where}: {names} is NaN/Inf. {after} Lower the learning rate, check the data or the "
        "teacher checkpoint."
    )
