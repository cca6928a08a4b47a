"""Train a teacher (or any network alone) with cross-entropy: :class:`DistillationModule` without distillation."""

from __future__ import annotations

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from cmkd_lightning.module import records as _records
from cmkd_lightning.module.distillation import DistillationModule
from cmkd_lightning.schedules import StepOrCosine


class TeacherModule(DistillationModule):
    r"""Train ``model`` with cross-entropy alone: the teachers (and "student alone" baselines) of the experiments.

    .. math::
        \mathcal{L} = \mathcal{L}_{CE}(z, y)

    The same module as ``DistillationModule(student=model, teacher=None)``, with the same optimiser, schedule,
    metrics and checks: its checkpoints store the network under ``student.``, so a distillation run reads them as
    its teacher with ``teacher_checkpoint=<file>`` (the only part present is taken). ``module.model`` is the
    network.

    Args:
        model: the network to train, or a model-zoo name (see :func:`cmkd_lightning.models.list_models`).
        num_classes: number of classes (linked from the datamodule by the CLI); inferred from the model's
            classifier when omitted.
        model_checkpoint: optional initial weights for the model (formats of
            :func:`cmkd_lightning.checkpoint.load_weights`).
        optimizer: a callable taking the parameters; ``None``: SGD lr 0.05, momentum 0.9, weight decay 5e-4 (see
            :class:`DistillationModule`).
        lr_scheduler: a callable taking the optimiser, stepped per epoch; default
            :class:`~cmkd_lightning.schedules.StepOrCosine`; ``None``: constant learning rate.
        check_finite: see :class:`DistillationModule`.
        channels_last: convert the model to channels-last memory format.
        compile: ``torch.compile`` the model in place.

    Example:
        >>> import torch
        >>> from cmkd_lightning import TeacherModule
        >>> from cmkd_lightning.schedules import WarmupCosine
        >>> module = TeacherModule("resnet8", num_classes=10, lr_scheduler=WarmupCosine)
        >>> module(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        model: str | nn.Module,
        num_classes: int | None = None,
        model_checkpoint: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = StepOrCosine,
        check_finite: bool | int = True,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            student=model,
            num_classes=num_classes,
            student_checkpoint=model_checkpoint,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            check_finite=check_finite,
            channels_last=channels_last,
            compile=compile,
        )
        _records.record(self, {}, keep_only=TeacherModule)  # its own arguments only (`model`, not `student`)

    @property
    def model(self) -> nn.Module:
        """The network being trained (stored as ``student`` so that checkpoints load as a teacher)."""
        return self.student
