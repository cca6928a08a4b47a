"""Reuse the logits the LightningModule already computed in its step: forward hooks on student and teacher."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

_ROLES = ("student", "teacher")


def batch_inputs(batch: Any) -> Tensor:
    """The input tensor ``x`` of a ``(x, y, ...)`` batch (or of a bare tensor batch)."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected the batch to be `(x, y)` with a tensor `x`, but got {type(x).__name__}.")
    return x


def batch_targets(batch: Any) -> Tensor:
    """The targets ``y`` of a ``(x, y, ...)`` batch."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not isinstance(batch[1], Tensor):
        raise TypeError(
            f"Expected the batch to be `(x, y)` with tensor targets `y`, but got {type(batch).__name__}."
        )
    return batch[1]


def has_teacher(pl_module: LightningModule) -> bool:
    """Whether ``pl_module`` holds a teacher network (``pl_module.teacher`` is an ``nn.Module``)."""
    return isinstance(getattr(pl_module, "teacher", None), nn.Module)


class LogitCapture:
    """Keep the ``(N, C)`` outputs of ``pl_module.student`` and ``pl_module.teacher`` of the current batch.

    While attached, forward hooks record every 2-D tensor the two networks return; :meth:`logits` then hands out
    the last one whose batch size matches ``x``, so a callback gets the very logits the module's step computed at
    no extra cost. When a network was not called during the step (a module that overrides ``validation_step``,
    a compiled model whose hooks did not fire), :meth:`logits` runs the missing forward itself: ``pl_module(x)``
    for the student and ``pl_module.teacher_forward(x)`` for the teacher, under ``torch.no_grad()``; with
    ``allow_forward=False`` (training steps, where an extra student forward in train mode would update the
    BatchNorm statistics) it returns ``None`` instead.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._outputs: dict[str, list[Tensor]] = {role: [] for role in _ROLES}

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self, pl_module: LightningModule) -> None:
        """Register the hooks on ``pl_module.student`` and ``pl_module.teacher`` (those that are modules)."""
        self.detach()
        for role in _ROLES:
            network = getattr(pl_module, role, None)
            if isinstance(network, nn.Module):
                self._handles.append(network.register_forward_hook(self._recorder(role)))

    def detach(self) -> None:
        """Remove the hooks and forget recorded outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Forget the recorded outputs (call at the start and end of every batch)."""
        for outputs in self._outputs.values():
            outputs.clear()

    def _recorder(self, role: str) -> Any:
        outputs = self._outputs[role]

        def _record(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.ndim == 2:
                outputs.append(output)

        return _record

    def _recorded(self, role: str, n: int) -> Tensor | None:
        for output in reversed(self._outputs[role]):
            if output.shape[0] == n:
                return output
        return None

    def logits(
        self, pl_module: LightningModule, x: Tensor, *, allow_forward: bool = True, teacher: bool = True
    ) -> tuple[Tensor, Tensor | None] | None:
        """Student and teacher logits for the batch ``x``, detached and in float32; clears the record.

        Args:
            pl_module: the module whose networks are hooked.
            x: the batch inputs.
            allow_forward: run a network that was not called during the step (see the class docstring).
            teacher: also return the teacher's logits (else ``None`` in their place).

        Returns:
            ``(student_logits, teacher_logits)``, or ``None`` when one is missing and ``allow_forward`` is off.
        """
        n = x.shape[0]
        student_out = self._recorded("student", n)
        teacher_out = self._recorded("teacher", n) if teacher else None
        self.clear()
        if student_out is None or (teacher and teacher_out is None):
            if not allow_forward:
                return None
            with torch.no_grad():
                if student_out is None:
                    student_out = pl_module(x)
                if teacher and teacher_out is None:
                    teacher_forward = getattr(pl_module, "teacher_forward", None) or pl_module.teacher
                    teacher_out = teacher_forward(x)
        student_logits = student_out.detach().float()
        return student_logits, (teacher_out.detach().float() if teacher_out is not None else None)
