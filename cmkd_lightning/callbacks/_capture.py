"""The logits the module computed in its step, as its steps return them to callbacks, and the callback base."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError


def batch_inputs(batch: Any) -> Tensor:
    """The input tensor ``x`` of a ``(x, y, ...)`` batch (or of a bare tensor batch)."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"Expected the batch to be `(x, y)` with a tensor `x`, but got {type(x).__name__}.")
    return x


def batch_targets(batch: Any) -> Tensor:
    """The targets ``y`` of a ``(x, y, ...)`` batch."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not isinstance(batch[1], Tensor):
        raise ArgumentTypeError(
            f"Expected the batch to be `(x, y)` with tensor targets `y`, but got {type(batch).__name__}."
        )
    return batch[1]


def has_teacher(pl_module: LightningModule) -> bool:
    """Whether ``pl_module`` holds a teacher network (``pl_module.teacher`` is an ``nn.Module``)."""
    return isinstance(getattr(pl_module, "teacher", None), nn.Module)


def step_logits(
    pl_module: LightningModule, outputs: Any, batch: Any, *, allow_forward: bool = True, teacher: bool = True
) -> tuple[Tensor, Tensor | None] | None:
    """Student and teacher logits of the step that returned ``outputs``, detached and in float32.

    They are ``outputs["student_logits"]`` and ``outputs["teacher_logits"]``, as the steps of
    :class:`~cmkd_lightning.DistillationModule` return them. When the step returned no such tensors (a subclass
    whose step returns ``None``, another LightningModule), the networks run here: ``pl_module(x)`` for the student
    and ``pl_module.teacher_forward(x)`` (else ``pl_module.teacher(x)``) for the teacher, under
    ``torch.no_grad()``; with ``allow_forward=False`` (training steps, where an extra student forward in train
    mode would update the BatchNorm statistics) the result is ``None`` instead.

    Args:
        pl_module: the module whose step ran.
        outputs: what the step returned (a callback's ``outputs`` argument).
        batch: the step's batch, ``(x, y, ...)``.
        allow_forward: run what the step did not return (see above).
        teacher: also return the teacher's logits (else ``None`` in their place).

    Returns:
        ``(student_logits, teacher_logits)``, or ``None`` when one is missing and ``allow_forward`` is off.

    Example:
        >>> z = torch.randn(2, 3)
        >>> step_logits(None, {"student_logits": z, "teacher_logits": z.double()}, None)[1].dtype
        torch.float32
    """
    student = outputs.get("student_logits") if isinstance(outputs, Mapping) else None
    teacher_out = outputs.get("teacher_logits") if teacher and isinstance(outputs, Mapping) else None
    student = student if isinstance(student, Tensor) else None
    teacher_out = teacher_out if isinstance(teacher_out, Tensor) else None
    if student is None or (teacher and teacher_out is None):
        if not allow_forward:
            return None
        x = batch_inputs(batch)
        with torch.no_grad():
            if student is None:
                student = pl_module(x)
            if teacher and teacher_out is None:
                teacher_out = (getattr(pl_module, "teacher_forward", None) or pl_module.teacher)(x)
    return student.detach().float(), (teacher_out.detach().float() if teacher_out is not None else None)


class StepLogitsCallback(Callback):
    """Base of the callbacks that read the student's and teacher's logits of the module's own steps.

    :meth:`setup` checks for a teacher (a module without one is skipped with one warning naming the callback),
    :meth:`batch_logits` hands out a step's logits from its ``outputs`` (:func:`step_logits`). Subclasses decide
    when to read them and what to do with them; the history they keep in :attr:`history` is saved with the
    trainer's checkpoint (``state_dict`` / ``load_state_dict``), so it survives a resume.
    """

    #: whether a module without a teacher makes the callback skip (and warn once)
    needs_teacher = True

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._enabled = True
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        """``rank_zero_warn(message)`` the first time ``key`` is seen."""
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_teacher(pl_module) or not self.needs_teacher
        if not self._enabled:
            self.warn_once(
                "teacher",
                f"{type(self).__name__}: the LightningModule has no `teacher`, so there is nothing to compare; "
                "the callback is skipped.",
            )

    def batch_logits(
        self,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        *,
        allow_forward: bool = True,
        teacher: bool = True,
    ) -> tuple[Tensor, Tensor | None] | None:
        """Student and teacher logits of the step that returned ``outputs`` (see :func:`step_logits`)."""
        return step_logits(pl_module, outputs, batch, allow_forward=allow_forward, teacher=teacher)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = copy.deepcopy(list(state_dict.get("history", [])))


def new_metric(metric: Metric, pl_module: LightningModule) -> Metric:
    """``metric`` on the module's device, its float64 states in float32 on MPS (which has no float64)."""
    metric = metric.to(pl_module.device)
    if pl_module.device.type == "mps":
        metric.set_dtype(torch.float32)
    return metric


@contextlib.contextmanager
def synced(metric: Metric) -> Iterator[Metric]:
    """Inside the block, ``metric``'s states are summed over processes; afterwards they are this process's again.

    Every process must enter, also one that saw no batch. A no-op without ``torch.distributed``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        with metric.sync_context(should_sync=True):
            yield metric
