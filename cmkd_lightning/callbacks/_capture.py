"""Reuse the logits the module already computed in its step: forward hooks, and the callback base around them."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric
from typing_extensions import override

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
        raise TypeError(f"Expected the batch to be `(x, y)` with tensor targets `y`, but got {type(batch).__name__}.")
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


class LogitCaptureCallback(Callback):
    """Base of the callbacks that read the student's and teacher's logits of the module's own steps.

    It owns the capture lifecycle every such callback needs: :meth:`setup` checks for a teacher (a module without
    one is skipped with one warning naming the callback), :meth:`start_capture` registers the forward hooks,
    every batch start clears them, :meth:`batch_logits` hands out the batch's logits, and teardown, exceptions
    and :meth:`stop_capture` remove them. Subclasses decide when to capture and what to do with the logits; the
    history they keep in :attr:`history` is saved with the trainer's checkpoint (``state_dict`` /
    ``load_state_dict``), so it survives a resume.
    """

    #: whether a module without a teacher makes the callback skip (and warn once)
    needs_teacher = True

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._capture = LogitCapture()
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

    def start_capture(self, pl_module: LightningModule) -> None:
        """Register the hooks on ``pl_module.student`` / ``pl_module.teacher``."""
        self._capture.attach(pl_module)

    def stop_capture(self) -> None:
        """Remove the hooks and forget what they recorded."""
        self._capture.detach()

    def batch_logits(
        self, pl_module: LightningModule, batch: Any, *, allow_forward: bool = True, teacher: bool = True
    ) -> tuple[Tensor, Tensor | None] | None:
        """Student and teacher logits of ``batch`` (see :meth:`LogitCapture.logits`)."""
        return self._capture.logits(pl_module, batch_inputs(batch), allow_forward=allow_forward, teacher=teacher)

    def _clear(self) -> None:
        if self._capture.attached:
            self._capture.clear()

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._clear()

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._clear()

    @override
    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._clear()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.stop_capture()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.stop_capture()

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
