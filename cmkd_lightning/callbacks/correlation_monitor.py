"""How closely the student's logits follow the teacher's: Pearson, Spearman, top-1 agreement and KL (Fig. 3)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from cmkd_lightning.callbacks._capture import StepLogitsCallback, new_metric, synced
from cmkd_lightning.callbacks._figures import epoch_number
from cmkd_lightning.metrics import AGREEMENT_MEASURES, LogitAgreement, agreement_per_sample
from cmkd_lightning.utilities.validation import check_optional_positive_int, check_str

#: Names of the monitored quantities, in the order of the running-sum vector (the count comes last).
CORRELATION_METRICS = AGREEMENT_MEASURES


def correlation_sums(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""Per-batch sums of the four agreement measures and the sample count, as one float64 vector.

    The sums behind :class:`~cmkd_lightning.metrics.LogitAgreement` (see
    :func:`~cmkd_lightning.metrics.agreement_per_sample` for the formulas); kept for code that reduces them itself.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.

    Returns:
        ``(5,)`` float64 tensor ``[sum r, sum rho, sum a, sum KL, N]`` (float32 on devices without float64).

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
        >>> [round(v, 4) for v in correlation_sums(z, z).tolist()]
        [2.0, 2.0, 2.0, 0.0, 2.0]
    """
    dtype = torch.float32 if student_logits.device.type == "mps" else torch.float64
    values = agreement_per_sample(student_logits, teacher_logits).to(dtype)
    return torch.cat([values.sum(dim=1), values.new_tensor([student_logits.shape[0]])])


class CorrelationMonitor(StepLogitsCallback):
    r"""Mean per-sample Pearson and Spearman correlation, top-1 agreement and KL between teacher and student.

    The paper's Fig. 3 tracks the Spearman and Pearson correlation of teacher and student outputs during
    distillation; this callback measures them on the whole validation set every validation epoch, and optionally
    on the training batch every ``every_n_train_steps`` optimiser steps. See :func:`correlation_sums` for the
    four quantities (exact Spearman ranks, KL(teacher || student) at temperature 1).

    Cost: none beyond the arithmetic. The logits are those the module's own steps computed and returned
    (``outputs["student_logits"]`` / ``outputs["teacher_logits"]``, as
    :class:`~cmkd_lightning.DistillationModule` returns them). If a validation step returns no logits (a subclass
    whose step returns ``None``, another LightningModule), the callback runs the networks itself:
    ``pl_module(x)`` / ``pl_module.teacher_forward(x)`` under ``torch.no_grad()``, one extra forward per batch.
    On training steps it never runs an extra forward (that would update BatchNorm statistics in train mode); the
    training-step values are those of the training-mode logits the loss saw.

    The arithmetic is :class:`~cmkd_lightning.metrics.LogitAgreement`; the callback only decides when to run and
    what to log. Distributed: the metric's states are sums ``[sum r, sum rho, sum a, sum KL, N]`` (memory O(1), no
    logits stored) summed over processes (``dist_reduce_fx="sum"``) before dividing, so the logged
    value equals the single-process value over the same samples (with a ``DistributedSampler``, make the
    validation set size divisible by the number of processes, or its padding repeats samples). All validation
    dataloaders are pooled. A module without a teacher is skipped with one warning.

    Logged metrics (``prefix`` defaults to ``"corr/"``):
        - ``corr/pearson``, ``corr/spearman``: mean per-sample Pearson / Spearman correlation of the logits over
          the validation set (epoch level).
        - ``corr/top1_agreement``: fraction of validation samples whose student and teacher top-1 class agree.
        - ``corr/kl``: mean KL(teacher || student) of the softmax outputs at temperature 1.
        - ``corr/train_pearson``, ``corr/train_spearman``, ``corr/train_top1_agreement``, ``corr/train_kl``:
          the same on the (global) training batch, every ``every_n_train_steps`` steps, when set.

    Attributes:
        history: one dict per logged evaluation: ``stage`` (``"val"`` or ``"train"``), ``epoch`` (counted from 1),
            ``step``,
            ``num_samples`` and the four values as floats. Sanity-check epochs are not recorded. Saved in the
            trainer's checkpoint (``state_dict``), so a resumed run keeps the earlier entries.

    Args:
        prefix: prepended to every logged key.
        every_n_train_steps: also log on the training batch every this many optimiser steps; ``None`` (default)
            disables it at no cost.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[CorrelationMonitor()])  # doctest: +SKIP
    """

    def __init__(self, prefix: str = "corr/", every_n_train_steps: int | None = None) -> None:
        super().__init__()
        self.prefix = check_str(prefix, "prefix")
        self.every_n_train_steps = check_optional_positive_int(every_n_train_steps, "every_n_train_steps")
        self._metric: LogitAgreement | None = None
        self._train_due = False
        self._last_train_step = -1
        self._train_step = -1

    def _record(self, trainer: Trainer, stage: str, step: int, metric: LogitAgreement) -> dict[str, Any] | None:
        """Compute (synced over processes) and keep one history entry; ``None`` when no sample was seen."""
        with synced(metric):
            values = metric.compute()
            count = int(metric.count)
        if count == 0:
            return None
        entry: dict[str, Any] = {"stage": stage, "epoch": epoch_number(trainer), "step": step, "num_samples": count}
        entry.update({name: float(values[name]) for name in CORRELATION_METRICS})
        return entry

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._last_train_step = -1

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled:
            self._metric = new_metric(LogitAgreement(validate_args=False, sync_on_compute=False), pl_module)

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._enabled and self._metric is not None:
            student_logits, teacher_logits = self.batch_logits(pl_module, outputs, batch)
            self._metric.update(student_logits, teacher_logits)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled or self._metric is None:
            return
        metric, self._metric = self._metric, None
        entry = self._record(trainer, "val", trainer.global_step, metric)  # every process joins the sync
        if trainer.sanity_checking or entry is None:
            return
        self.history.append(entry)
        # Already summed over processes: log plain floats (identical on every rank) without another reduction.
        for name in CORRELATION_METRICS:
            pl_module.log(f"{self.prefix}{name}", entry[name], on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ training steps
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n is None or not self._enabled:
            return
        step = trainer.global_step
        # Under gradient accumulation several batches share a global step: monitor the first of them.
        self._train_due = step % n == 0 and step != self._last_train_step
        if self._train_due:
            self._train_step = step

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._train_due:
            return
        self._train_due = False
        logits = self.batch_logits(pl_module, outputs, batch, allow_forward=False)
        if logits is None:
            self.warn_once(
                "train",
                "CorrelationMonitor: `training_step` returned no `student_logits` and `teacher_logits`, so the "
                "training-step correlations are not logged (no extra forward is run in train mode).",
            )
            return
        self._last_train_step = self._train_step
        metric = new_metric(LogitAgreement(validate_args=False, sync_on_compute=False), pl_module)
        metric.update(*logits)
        entry = self._record(trainer, "train", self._last_train_step, metric)
        if entry is None:
            return
        self.history.append(entry)
        for name in CORRELATION_METRICS:
            pl_module.log(f"{self.prefix}train_{name}", entry[name], on_step=True, on_epoch=False, sync_dist=False)
