"""The LightningModule that distils a frozen teacher into a trainable student."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import AttributeDict
from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import UsageError
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.models import extract_features, feature_hooks, freeze
from cmkd_lightning.module import defaults as _defaults
from cmkd_lightning.module import guard as _guard
from cmkd_lightning.module import networks as _networks
from cmkd_lightning.module import records as _records
from cmkd_lightning.module.checkpointing import CheckpointHooks
from cmkd_lightning.module.epoch_metrics import EpochLogging, epoch_metrics
from cmkd_lightning.module.networks import Features, no_autocast
from cmkd_lightning.schedules import StepOrCosine
from cmkd_lightning.utilities.runtime import QuietStart


class DistillationModule(EpochLogging, CheckpointHooks, QuietStart, LightningModule):
    r"""Distil a frozen teacher into a student with any weighted sum of distillation losses.

    .. math::
        \mathcal{L} = \alpha\,\mathcal{L}_{CE}(z_s, y) + \sum_k w_k\, u_k(e)\, \mathcal{L}_k(z_s, z_t, y)
        + \sum_j \mathcal{L}^{extra}_j

    with ``alpha = ce_weight``, ``w_k = loss_weights[k]``, ``u_k(e)`` the loss's warm-up factor in epoch ``e`` (DKD's
    ramp) and the last sum a subclass's :meth:`extra_losses`. With no teacher (or no losses) it trains the student
    with cross-entropy alone. The teacher is frozen (no grad, eval mode also after ``.train()``, never optimised);
    losses run in float32 outside autocast. Defaults that follow other arguments are in ``docs/DEFAULTS.md``
    (``loss_weights``/``ce_weight=None``: the losses' recommended weights); the hyperparameters hold the effective
    values, losses and optimiser as ``class_path`` configs. Checkpoints hold the student (the teacher only with
    ``save_teacher_in_checkpoint``); ``nn.Module`` arguments are named by ``load_from_checkpoint`` when missing.

    Extending: override :meth:`extra_losses` (terms added to the loss, logged, averaged and checked like the
    others); set ``capture_features = True`` to receive the penultimate features in it.

    Logged: ``train/loss_step`` and ``train/lr`` on the steps Lightning sends to the logger (every
    ``log_every_n_steps``); per epoch, for ``<stage>`` in train, val, test (sample means, all-reduced over DDP
    ranks): ``<stage>/loss``, ``<stage>/ce``, ``<stage>/<loss>/loss`` (weighted) and ``<stage>/<loss>/<component>``,
    ``train/<loss>/warmup`` while below 1, ``<stage>/<extra key>``, ``<stage>/acc_top1``, ``<stage>/acc_top5``,
    ``val/acc_top1_best``, ``val/teacher_acc_top1`` / ``_top5``.

    Args:
        student: the trainable network, or a model-zoo name (:func:`cmkd_lightning.models.list_models`).
        teacher: the frozen network, a zoo name, or ``None`` for cross-entropy training.
        losses: :class:`~cmkd_lightning.losses.DistillationLoss` objects (or their ``class_path`` configs).
        loss_weights: one weight per loss; ``None``: each loss's ``recommended_weight``.
        ce_weight: ``alpha`` (0 disables the cross-entropy); ``None``: the losses' ``recommended_ce_weight``.
        num_classes: number of classes (linked from the datamodule by the CLI); else the student's classifier's.
        teacher_checkpoint: the teacher's weights (RepDistiller, Lightning or state_dict file), loaded strictly.
        teacher_checkpoint_part: ``"student"``/``"teacher"`` network of a checkpoint of this module holding both.
        student_checkpoint: optional initial weights for the student.
        optimizer: a callable taking the parameters (``torch.optim.Adam``, a ``functools.partial``, or in YAML
            ``class_path: torch.optim.SGD`` + ``init_args`` without ``params``); ``None``: the CIFAR-100 recipe,
            SGD lr 0.05, momentum 0.9, weight decay 5e-4.
        lr_scheduler: a callable taking the optimiser, stepped once per epoch; default
            :class:`~cmkd_lightning.schedules.StepOrCosine` (x0.1 at 150/180/210 when they fall within
            ``max_epochs``, else a cosine over the run); ``None``: constant learning rate.
        save_teacher_in_checkpoint: also store the teacher's weights in checkpoints.
        check_finite: stop with an error naming the stage, step and term when the student's logits or a loss term
            are NaN/Inf (training: before the optimiser step). ``True``: every step, ``n``: every n-th step,
            ``False``/0: never. Costs one host-device sync per checked step (``docs/DEVICE.md``).
        channels_last: convert both networks to channels-last memory format.
        compile: ``torch.compile`` the student and teacher in place (state_dict keys unchanged).
        teacher_chance_factor: warn when the teacher's validation Top-1 is below this multiple of chance.
        teacher_cache: a teacher-logit cache file (``docs/TEACHER_CACHE.md``); training steps read the teacher's
            logits from it instead of running the teacher. The data module must be given the same file.

    Example:
        >>> import torch
        >>> from cmkd_lightning.losses import CMKDLoss
        >>> module = DistillationModule("resnet8", "resnet20", losses=[CMKDLoss()], num_classes=10,
        ...                             optimizer=torch.optim.Adam)
        >>> module(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    capture_features: ClassVar[bool] = False

    def __init__(
        self,
        student: str | nn.Module,
        teacher: str | nn.Module | None = None,
        losses: Sequence[DistillationLoss] | DistillationLoss | None = None,
        loss_weights: Sequence[float] | None = None,
        ce_weight: float | None = None,
        num_classes: int | None = None,
        teacher_checkpoint: str | None = None,
        teacher_checkpoint_part: Literal["student", "teacher"] | None = None,
        student_checkpoint: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = StepOrCosine,
        save_teacher_in_checkpoint: bool = False,
        check_finite: bool | int = True,
        channels_last: bool = False,
        compile: bool = False,
        teacher_chance_factor: float = 2.0,
        teacher_cache: str | None = None,
    ) -> None:
        super().__init__()
        self._modules_to_pass = _records.save_hyperparameters(self, inspect.currentframe())
        losses, self.loss_weights, self.ce_weight = _defaults.resolve_losses(
            losses, loss_weights, ce_weight, teacher is not None
        )
        self._check_every = _guard.check_every(check_finite)
        optimizer = _defaults.DEFAULT_OPTIMIZER if optimizer is None else optimizer
        self._optimizer = _records.build_callable(optimizer, "optimizer")
        self._lr_scheduler = None if lr_scheduler is None else _records.build_callable(lr_scheduler, "lr_scheduler")
        effective = _records.effective_configs(self._modules_to_pass, losses, optimizer, lr_scheduler)
        _records.record(self, {"loss_weights": self.loss_weights, "ce_weight": self.ce_weight, **effective})

        self.student = _networks.build(student, "student", num_classes, student_checkpoint)
        self.teacher = _networks.build(teacher, "teacher", num_classes, teacher_checkpoint, teacher_checkpoint_part)
        if self.teacher is not None:
            freeze(self.teacher)
        self.num_classes = _networks.resolve_num_classes(self.student, self.teacher, num_classes)
        self.losses = nn.ModuleList(losses)
        self._loss_names = _defaults.unique_names(losses)
        self._teacher_cache = None
        if teacher_cache is not None:
            from cmkd_lightning.teacher_cache.store import open_for_module

            self._teacher_cache = open_for_module(teacher_cache, self.teacher, self.num_classes)
            # An instance-level hook: only a module with a cache overrides it, so Lightning's "overridden in the
            # LightningModule but a LightningDataModule was passed" notice does not fire for every other run.
            self.on_before_batch_transfer = self._attach_cached_teacher
        self._feature_layers = _networks.build_feature_losses(self.losses, self.student, self.teacher, teacher_cache)
        _networks.prepare([self.student, self.teacher], channels_last=channels_last, compile=compile)
        self.epoch_metrics = epoch_metrics(self.num_classes, self._epoch_keys())
        self.best_val_top1 = 0.0
        self._teacher_checked = False

    @property
    @override
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters loggers receive: the recorded ones, with the defaults resolved in ``__init__``."""
        recorded = getattr(self, "recorded_hparams", None)
        return AttributeDict(copy.deepcopy(recorded)) if recorded is not None else super().hparams_initial

    def _attached_trainer(self) -> Any:
        """The Trainer this module is attached to, or None (a step called by hand, outside ``Trainer``)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's documented answer when no Trainer is attached
            return None

    @override
    def train(self, mode: bool = True) -> DistillationModule:
        """Switch the student (and metrics) to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Student logits for a batch of inputs."""
        return self.student(x)

    def teacher_forward(self, x: Tensor) -> Tensor:
        """Teacher logits under ``torch.no_grad()`` (never ``inference_mode``, whose tensors autograd rejects)."""
        if self.teacher is None:
            raise UsageError("This DistillationModule has no teacher.")
        with torch.no_grad():
            return self.teacher(x)

    # ------------------------------------------------------------------ losses
    def compute_losses(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        features: Features | None = None,
        batch: Any = None,
    ) -> dict[str, Tensor]:
        """Cross-entropy plus every weighted distillation loss, in float32 outside autocast.

        Feature losses (:class:`~cmkd_lightning.losses.FeatureDistillationLoss`) also receive the step's
        ``features`` (and the ``batch``'s sample indices for CRD); a ``training_only`` one is skipped outside training.

        Returns:
            ``{"loss": total, "ce": ..., "<name>/loss": weighted loss, "<name>/<component>": ...}``.
        """
        out: dict[str, Tensor] = {}
        with no_autocast(student_logits.device.type):
            zs = student_logits.float()
            ce = _guard.cross_entropy(zs, targets)
            total = self.ce_weight * ce
            out["ce"] = ce.detach()
            if teacher_logits is not None and len(self.losses):
                zt = teacher_logits.detach().float()
                for name, loss, weight in zip(self._loss_names, self.losses, self.loss_weights):
                    if isinstance(loss, FeatureDistillationLoss):
                        if loss.training_only and not self.training:
                            continue
                        terms = loss(zs, zt, targets, **_networks.feature_inputs(loss, features, batch))
                    else:
                        terms = loss(zs, zt, targets)
                    factor = loss.warmup_factor(self.current_epoch)
                    weighted = weight * factor * terms["loss"]
                    total = total + weighted
                    out[f"{name}/loss"] = weighted
                    out.update({f"{name}/{k}": v for k, v in terms.items() if k != "loss"})
                    if factor < 1.0:  # made on the device by a fill kernel: no host tensor, no copy
                        out[f"{name}/warmup"] = zs.new_full((), factor)
        out["loss"] = total
        return out

    def extra_losses(
        self, batch: Any, student_logits: Tensor, teacher_logits: Tensor | None, features: Features | None
    ) -> dict[str, Tensor]:
        """Extension hook: extra loss terms of a subclass, each already weighted (default: none).

        Every value (a scalar tensor) is added to the total loss, logged per epoch as ``<stage>/<key>``, averaged
        over the epoch's samples and DDP ranks, and checked by ``check_finite``; keys must differ from the module's
        own (``ce``, ``<loss>/...``). Runs in training, validation and test steps, outside ``torch.no_grad`` in
        training. With ``capture_features = True`` on the class, ``features`` holds the student's and teacher's
        penultimate features (the input of their final linear layer, one forward pass each); the teacher's are
        ``None`` when its logits come from ``teacher_cache``.

        Args:
            batch: the batch as the data module yields it (inputs first, targets second).
            student_logits: ``(N, C)``.
            teacher_logits: ``(N, C)``, or ``None`` without a teacher.
            features: :class:`Features` or ``None``.
        """
        return {}

    def _forward(self, batch: Any, stage: str) -> tuple[Tensor, Tensor | None, Features | None]:
        x, y = batch[0], batch[1]
        layers = self._feature_layers
        grab = extract_features if self.capture_features else (lambda net, inputs: (None, net(inputs)))
        hooks = feature_hooks if layers is not None else (lambda *_: nullcontext())
        # the usual step (no feature hooks, no captured features): the two forward calls with nothing around them
        plain = layers is None and not self.capture_features
        fs = ft = zt = named_s = named_t = None
        if plain:
            zs = self.student(x)
        else:
            with hooks(self.student, layers.student if layers else None) as named_s:
                fs, zs = grab(self.student, x)
        if self._teacher_cache is not None and stage == "train":
            zt = self._teacher_cache.batch_logits(batch, y)
        elif self.teacher is not None and plain:
            with torch.no_grad():
                zt = self.teacher(x)
        elif self.teacher is not None:
            with torch.no_grad(), hooks(self.teacher, layers.teacher if layers else None) as named_t:
                ft, zt = grab(self.teacher, x)
        _networks.check_logits(zs, "student", y, self.num_classes)
        if zt is not None:
            _networks.check_logits(zt, "teacher", y, self.num_classes)
        if layers is not None:
            return zs, zt, Features(fs, ft, named_s, named_t)
        return zs, zt, (Features(fs, ft) if self.capture_features else None)

    def _epoch_keys(self) -> list[str]:
        """The loss terms known before any step (others, e.g. ``extra_losses`` keys, join at their first step)."""
        keys = ["loss", "ce"]
        if self.teacher is not None or self._teacher_cache is not None:
            keys += [f"{name}/loss" for name in self._loss_names]
        return keys

    def _shared_step(self, batch: Any, stage: str, batch_idx: int = 0) -> dict[str, Tensor]:
        """The step's loss terms (see :meth:`_step`)."""
        return self._step(batch, stage, batch_idx)["terms"]

    def _step(self, batch: Any, stage: str, batch_idx: int = 0) -> dict[str, Any]:
        """One step of ``stage``: ``{"loss", "terms", "student_logits", "teacher_logits"}``, metrics updated.

        The logits are detached (the teacher's ``None`` without a teacher); the step methods hand them to the
        callbacks as their ``outputs``.
        """
        y = batch[1]
        student_logits, teacher_logits, features = self._forward(batch, stage)
        # features and batch only reach compute_losses when a feature loss reads them, so that a subclass's
        # override with the three-argument signature keeps working
        feature_args = {} if self._feature_layers is None else {"features": features, "batch": batch}
        terms = self.compute_losses(student_logits, teacher_logits, y, **feature_args)
        extra = self.extra_losses(batch, student_logits, teacher_logits, features)
        terms = _guard.add_extra_terms(terms, extra, type(self).__name__) if extra else terms
        means = self.epoch_metrics[f"{stage}_means"]
        values = means.vector(terms)  # one stack of the terms, shared by the guard and the epoch means
        step = self.global_step if stage == "train" else batch_idx
        if self._check_every and step % self._check_every == 0:
            checked = _guard.stack_terms(terms) if values is None else values
            if not _guard.all_finite(checked, student_logits):  # one read; the error is built only on failure
                where = _guard.where(stage, batch_idx, self.global_step, self.current_epoch)
                _guard.raise_if_not_finite(
                    terms, stage, student_logits, where, batch[0], teacher_logits, self.global_step == 0
                )
        accuracies = [(f"{stage}_top1", student_logits), (f"{stage}_top5", student_logits)]
        if stage == "val" and teacher_logits is not None:
            accuracies += [("teacher_top1", teacher_logits), ("teacher_top5", teacher_logits)]
        for name, logits in accuracies:
            self.epoch_metrics[name].update(logits.detach(), y)
        means.update(terms if values is None else values, y.shape[0])
        return {
            "loss": terms["loss"],
            "terms": terms,
            "student_logits": student_logits.detach(),
            "teacher_logits": None if teacher_logits is None else teacher_logits.detach(),
        }

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)  # QuietStart: Lightning's start-of-run noise is filtered until the loop starts
        if self._teacher_cache is not None and stage == "fit":
            self._teacher_cache.check_datamodule(getattr(self.trainer, "datamodule", None))

    def _attach_cached_teacher(self, batch: Any, dataloader_idx: int) -> Any:
        # The cached teacher logits are read on the host and travel with the batch: no device->host read.
        return self._teacher_cache.attach(batch)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """``{"loss", "student_logits", "teacher_logits"}``: the loss Lightning optimises, the logits for callbacks."""
        out = self._step(batch, "train", batch_idx)
        terms = out.pop("terms")
        # Per-step values go through `self.log` only on the steps Lightning sends to the logger (every
        # `log_every_n_steps`): what the logger receives is unchanged, and the other steps skip ~0.3 ms of Python
        # per call. Not `prog_bar`: Lightning reads a bar value back to the host at the end of every later step of
        # the epoch (a device sync on a GPU); cmkd's progress bars show every step's loss from the step's `outputs`
        # (callbacks.progress_bar).
        trainer = self._attached_trainer()
        if trainer is None or self._logger_step(trainer):
            self.log("train/loss_step", terms["loss"].detach(), on_step=True, on_epoch=False)
            if trainer is not None:
                lr = self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"]
                self.log("train/lr", lr, on_step=True, on_epoch=False)
        return out

    def _logger_step(self, trainer: Any) -> bool:
        """Whether Lightning sends this training step's logged values to the logger.

        Every ``log_every_n_steps`` optimiser steps, counted from 1, and every step of ``fast_dev_run``; a test
        checks these steps against the rows a logger receives.
        """
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """``{"loss", "student_logits", "teacher_logits"}`` (detached): the callbacks' ``outputs``."""
        return self._eval_output(self._step(batch, "val", batch_idx))

    @override
    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """``{"loss", "student_logits", "teacher_logits"}`` (detached): the callbacks' ``outputs``."""
        return self._eval_output(self._step(batch, "test", batch_idx))

    @staticmethod
    def _eval_output(out: dict[str, Any]) -> dict[str, Any]:
        del out["terms"]
        out["loss"] = out["loss"].detach()
        return out

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(x).softmax(dim=-1)

    @override
    def configure_optimizers(self) -> Any:
        # Every trainable parameter: the student plus whatever a subclass adds (e.g. a projection head).
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        optimizer = self._optimizer([p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids])
        if self._lr_scheduler is None:
            return optimizer
        scheduler = self._lr_scheduler(optimizer)
        trainer = self._attached_trainer()
        _defaults.announce_schedule(scheduler, trainer.max_epochs if trainer is not None else None)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
