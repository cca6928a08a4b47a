"""How closely the student's logits follow the teacher's: Pearson, Spearman, top-1 agreement and KL (Fig. 3)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from cmkd_lightning._validation import check_optional_positive_int, check_str
from cmkd_lightning.callbacks._capture import LogitCapture, batch_inputs, has_teacher
from cmkd_lightning.functional import kd_loss, pearson_corr, spearman_corr

#: Names of the monitored quantities, in the order of the running-sum vector (the count comes last).
CORRELATION_METRICS = ("pearson", "spearman", "top1_agreement", "kl")


def correlation_sums(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""Per-batch sums of the four agreement measures and the sample count, as one float64 vector.

    For each sample ``i`` with student logits :math:`z^s_i` and teacher logits :math:`z^t_i` (``C`` classes):

    .. math::
        r_i = \operatorname{pearson}(z^s_i, z^t_i),\quad
        \rho_i = \operatorname{pearson}(\operatorname{rank} z^s_i, \operatorname{rank} z^t_i),\quad
        a_i = [\arg\max z^s_i = \arg\max z^t_i],\quad
        \mathrm{KL}_i = \sum_c p^t_{i,c} \log \frac{p^t_{i,c}}{p^s_{i,c}},\ p = \operatorname{softmax}(z)

    (exact ranks with average ties; KL at temperature 1). Summing these and the count over batches and
    processes, then dividing, gives the dataset means exactly, without keeping any logits.

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
    s, t = student_logits.float(), teacher_logits.float()
    dtype = torch.float32 if s.device.type == "mps" else torch.float64
    parts = (
        pearson_corr(s, t).sum(),
        spearman_corr(s, t).sum(),
        (s.argmax(dim=-1) == t.argmax(dim=-1)).sum(),
        kd_loss(s, t, temperature=1.0, reduction="sum"),
        torch.tensor(s.shape[0], device=s.device),
    )
    return torch.stack([p.to(dtype) for p in parts])


class CorrelationMonitor(Callback):
    r"""Mean per-sample Pearson and Spearman correlation, top-1 agreement and KL between teacher and student.

    The paper's Fig. 3 tracks the Spearman and Pearson correlation of teacher and student outputs during
    distillation; this callback measures them on the whole validation set every validation epoch, and optionally
    on the training batch every ``every_n_train_steps`` optimiser steps. See :func:`correlation_sums` for the
    four quantities (exact Spearman ranks, KL(teacher || student) at temperature 1).

    Cost: none beyond the arithmetic. The logits are those the module's own ``validation_step`` computed, read
    by forward hooks on ``pl_module.student`` and ``pl_module.teacher`` that exist only during validation
    epochs (and during the monitored training steps). If a network was not called in a validation step (a
    subclass that skips it, a compiled model whose hooks do not fire), the callback runs it itself:
    ``pl_module(x)`` / ``pl_module.teacher_forward(x)`` under ``torch.no_grad()``, one extra forward per batch.
    On training steps it never runs an extra forward (that would update BatchNorm statistics in train mode); the
    training-step values are those of the training-mode logits the loss saw.

    Distributed: each process keeps running sums ``[sum r, sum rho, sum a, sum KL, N]`` (memory O(1), no logits
    stored) and they are summed over processes (``trainer.strategy.reduce``) before dividing, so the logged
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
        history: one dict per logged evaluation: ``stage`` (``"val"`` or ``"train"``), ``epoch``, ``step``,
            ``num_samples`` and the four values as floats. Sanity-check epochs are not recorded.

    Args:
        prefix: prepended to every logged key.
        every_n_train_steps: also log on the training batch every this many optimiser steps; ``None`` (default)
            disables it at no cost.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[CorrelationMonitor()])  # doctest: +SKIP
    """

    def __init__(self, prefix: str = "corr/", every_n_train_steps: int | None = None) -> None:
        self.prefix = check_str(prefix, "prefix")
        self.every_n_train_steps = check_optional_positive_int(every_n_train_steps, "every_n_train_steps")
        self.history: list[dict[str, Any]] = []
        self._capture = LogitCapture()
        self._sums: Tensor | None = None
        self._enabled = True
        self._warned: set[str] = set()
        self._train_due = False
        self._last_train_step = -1
        self._train_step = -1

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _values(self, trainer: Trainer, sums: Tensor) -> dict[str, Tensor]:
        total = trainer.strategy.reduce(sums, reduce_op="sum")
        count = total[-1].clamp_min(1)
        values = {name: (total[i] / count).float() for i, name in enumerate(CORRELATION_METRICS)}
        values["num_samples"] = total[-1]
        return values

    def _record(self, trainer: Trainer, stage: str, step: int, values: dict[str, Tensor]) -> dict[str, Any]:
        entry: dict[str, Any] = {"stage": stage, "epoch": trainer.current_epoch, "step": step}
        entry.update({name: float(value) for name, value in values.items()})
        entry["num_samples"] = int(entry["num_samples"])
        self.history.append(entry)
        return entry

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_teacher(pl_module)
        self._last_train_step = -1
        if not self._enabled:
            self._warn_once(
                "teacher",
                "CorrelationMonitor: the LightningModule has no `teacher`, so there is nothing to correlate; "
                "the callback is skipped.",
            )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._capture.detach()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._capture.detach()

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled:
            return
        self._capture.attach(pl_module)
        self._sums = None

    @override
    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._enabled:
            self._capture.clear()

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
        if not self._enabled:
            return
        student_logits, teacher_logits = self._capture.logits(pl_module, batch_inputs(batch))
        sums = correlation_sums(student_logits, teacher_logits)
        self._sums = sums if self._sums is None else self._sums + sums

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled:
            return
        self._capture.detach()
        sums = (
            self._sums
            if self._sums is not None
            else torch.zeros(5, dtype=torch.float64, device=pl_module.device)
        )
        self._sums = None
        values = self._values(
            trainer, sums
        )  # every process joins the reduction, also during the sanity check
        if trainer.sanity_checking or int(values["num_samples"]) == 0:
            return
        # Already summed over processes: log plain floats (identical on every rank) without another reduction.
        entry = self._record(trainer, "val", trainer.global_step, values)
        for name in CORRELATION_METRICS:
            pl_module.log(f"{self.prefix}{name}", entry[name], on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------------ training steps
    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        if n is None or not self._enabled:
            return
        step = trainer.global_step
        # Under gradient accumulation several batches share a global step: monitor the first of them.
        self._train_due = step % n == 0 and step != self._last_train_step
        if self._train_due:
            self._train_step = step
            self._capture.attach(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._train_due:
            return
        self._train_due = False
        logits = self._capture.logits(pl_module, batch_inputs(batch), allow_forward=False)
        self._capture.detach()
        if logits is None:
            self._warn_once(
                "train",
                "CorrelationMonitor: the student or teacher was not called during `training_step`, so the "
                "training-step correlations are not logged (no extra forward is run in train mode).",
            )
            return
        self._last_train_step = self._train_step
        entry = self._record(
            trainer, "train", self._last_train_step, self._values(trainer, correlation_sums(*logits))
        )
        for name in CORRELATION_METRICS:
            pl_module.log(
                f"{self.prefix}train_{name}", entry[name], on_step=True, on_epoch=False, sync_dist=False
            )
