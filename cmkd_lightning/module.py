"""The LightningModule that distils a frozen teacher into a trainable student."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from cmkd_lightning import _defaults, _records
from cmkd_lightning.losses.base import DistillationLoss

_OPTIMIZERS = ("sgd", "adamw")

# The frozen teacher is in eval mode on purpose; Lightning's generic notice about it is noise here.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
_SCHEDULES = ("auto", "multistep", "cosine", "none")


def _accuracy(num_classes: int, top_k: int) -> MulticlassAccuracy:
    # validate_args=False: torchmetrics' input checks read the targets' values (host-device syncs every step)
    return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type``; nothing for devices without autocast (e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _holds_module(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value)


def _build_model(model: nn.Module | str | None, role: str, num_classes: int | None) -> nn.Module | None:
    if model is None or isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        from cmkd_lightning.models import create_model

        if num_classes is None:
            raise ValueError(
                f"Expected `num_classes` to be set when `{role}` is a model-zoo name ({model!r}), but got None."
            )
        return create_model(model, num_classes=num_classes)
    raise TypeError(f"Expected `{role}` to be an nn.Module or a model-zoo name, but got {type(model).__name__}.")


def _classifier_classes(model: nn.Module) -> int | None:
    from cmkd_lightning.models import get_classifier

    try:
        return get_classifier(model).out_features
    except (ValueError, TypeError, AttributeError):
        return None


class DistillationModule(LightningModule):
    r"""Distil a frozen teacher into a student with any weighted sum of distillation losses.

    .. math::
        \mathcal{L} = \alpha\,\mathcal{L}_{CE}(z_s, y) + \sum_k w_k\, u_k(e)\, \mathcal{L}_k(z_s, z_t, y)

    with ``alpha = ce_weight``, ``w_k = loss_weights[k]`` and ``u_k(e)`` the loss's own warm-up factor in epoch ``e``
    (DKD's linear ramp). "DKD + CMKD" is ``losses=[DKDLoss(...), CMKDLoss(...)]``. With no teacher (or no losses)
    the module trains the student with cross-entropy alone, so the same module, configs and logging train teachers
    and "student alone" baselines.

    The teacher is frozen: ``requires_grad`` off, eval mode at all times (also after ``.train()``), run under
    ``torch.no_grad()``, never given to the optimiser. Losses run in float32 outside autocast whatever the
    precision plugin.

    Defaults that follow other arguments (one rule each, ``docs/DEFAULTS.md``; an explicit value always wins):

    - ``loss_weights=None``: each loss's ``recommended_weight`` (KD 0.9, LS-KD 9, DIST, DKD, NKD and CMKD 1).
    - ``ce_weight=None``: the ``recommended_ce_weight`` of the losses (KD and LS-KD 0.1; DIST, DKD and NKD 1;
      ``None`` = no opinion) when they agree, else 1.0 with a warning; 1.0 without losses.
    - ``weight_decay=None`` / ``momentum=None``: 5e-4 / 0.9 for SGD (the CIFAR-100 recipe), 1e-2 (AdamW's own) /
      unused for AdamW, which warns about a ``momentum`` or ``nesterov`` it ignores.
    - ``lr_schedule="auto"``: step decay at ``lr_milestones`` when every milestone is below the trainer's
      ``max_epochs`` (the 240-epoch CIFAR recipe), otherwise a cosine over ``max_epochs``; the choice is
      announced when training starts. An explicit ``"multistep"`` whose milestones reach ``max_epochs`` warns.

    The hyperparameters (checkpoint and logger) hold the effective values: the losses as ``class_path`` configs
    with all their arguments, ``loss_weights``, ``ce_weight``, ``weight_decay`` and ``momentum``; ``losses`` may be
    given as such configs too, so a checkpoint rebuilds its losses. Checkpoints hold the student; the teacher only
    with ``save_teacher_in_checkpoint=True`` (it is rebuilt from ``teacher`` / ``teacher_checkpoint`` when the
    checkpoint is loaded). Networks given as ``nn.Module`` objects (Python use) are not hyperparameters: the
    checkpoint names their classes and ``load_from_checkpoint`` says which ones to pass again. Model-zoo names and
    LightningCLI configs are stored and rebuilt.

    Logged metrics:
        Per training step: ``train/loss_step`` (total loss, also on the progress bar); every
        ``log_every_n_steps`` steps ``train/lr`` (learning rate of the first parameter group). Per epoch, for
        ``<stage>`` in ``train``, ``val``, ``test`` (means over the epoch's samples, all-reduced over DDP ranks):

        - ``<stage>/loss``, ``<stage>/ce``: total loss and cross-entropy.
        - ``<stage>/<loss>/loss`` (weighted, warm-up applied) and ``<stage>/<loss>/<component>`` for every
          distillation loss (e.g. ``train/cmkd/pearson``, ``train/cmkd/spearman``, ``train/cmkd/hard_fraction``,
          ``train/dkd/nckd``); ``train/<loss>/warmup`` while a warm-up factor is below 1.
        - ``<stage>/acc_top1``, ``<stage>/acc_top5`` (torchmetrics, micro average, ``top_k = min(5, C)``).
        - ``val/acc_top1_best``: best ``val/acc_top1`` so far (the reference repos report best or last).
        - ``val/teacher_acc_top1``, ``val/teacher_acc_top5``: the teacher on the validation set.

    Args:
        student: the trainable network, or a model-zoo name (see :func:`cmkd_lightning.models.list_models`).
        teacher: the frozen network, a zoo name, or ``None`` for cross-entropy training.
        losses: one or more :class:`~cmkd_lightning.losses.DistillationLoss` objects (or their ``class_path``
            configs).
        loss_weights: one weight per loss; ``None``: each loss's ``recommended_weight``.
        ce_weight: weight ``alpha`` of the cross-entropy on labels (0 disables it); ``None``: the losses'
            recommended weight (see above).
        num_classes: number of classes (linked from the datamodule by the CLI); inferred from the student's
            classifier when omitted.
        teacher_checkpoint: weights file for the teacher (RepDistiller ``{'model': ...}``, Lightning checkpoint,
            or state_dict); loaded strictly at construction.
        teacher_checkpoint_part: which network of a Lightning checkpoint of this module to load as the teacher.
            ``None`` takes the only one present: a teacher trained with cross-entropy by this module is stored as
            its ``student``; a checkpoint holding both asks for the part.
        student_checkpoint: optional initial weights for the student (same formats; one part only).
        optimizer: ``"sgd"`` or ``"adamw"``.
        lr: base learning rate.
        momentum: SGD momentum; ``None``: 0.9.
        weight_decay: weight decay; ``None``: 5e-4 for SGD, 1e-2 for AdamW.
        nesterov: SGD Nesterov momentum.
        lr_schedule: ``"auto"`` (see above), ``"multistep"`` (``lr_milestones``, ``lr_decay``), ``"cosine"`` (over
            ``max_epochs``) or ``"none"``.
        lr_milestones: epochs at which the multistep schedule multiplies the lr by ``lr_decay``.
        lr_decay: multiplicative decay of the multistep schedule.
        save_teacher_in_checkpoint: also store the teacher's weights in checkpoints.
        check_finite: the module's one runtime guard: stop with an error naming the stage, step and component
            when the student's logits or a loss term are NaN/Inf, in training (before the optimiser step),
            validation and test. ``True`` checks every step, an integer ``n >= 1`` every ``n``-th step (training:
            global step; validation/test: batch index), ``False`` or ``0`` never. Cost: one host-device sync per
            checked step (it reads one flag); nothing else in the module's step reads device values
            (``docs/DEVICE.md``).
        channels_last: convert both networks to channels-last memory format.
        compile: ``torch.compile`` the student and teacher (in place, so state_dict keys do not change); the
            losses stay eager.
        teacher_chance_factor: warn when the teacher's validation Top-1 is below this multiple of chance.
        teacher_cache: a teacher-logit cache file (``cmkd-teacher-cache build``, ``docs/TEACHER_CACHE.md``),
            checked against the teacher's weights and ``num_classes`` here. Training steps then read the teacher's
            logits from it (looked up on the host before the batch moves to the device) instead of running the
            teacher; validation and test still run the teacher. The data module must be given the same file.
    """

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
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float | None = None,
        weight_decay: float | None = None,
        nesterov: bool = False,
        lr_schedule: Literal["auto", "multistep", "cosine", "none"] = "auto",
        lr_milestones: Sequence[int] = (150, 180, 210),
        lr_decay: float = 0.1,
        save_teacher_in_checkpoint: bool = False,
        check_finite: bool | int = True,
        channels_last: bool = False,
        compile: bool = False,
        teacher_chance_factor: float = 2.0,
        teacher_cache: str | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self._modules_to_pass = _records.modules_passed(self.hparams, type(self))
        module_valued = [k for k, v in self.hparams.items() if _holds_module(v)]
        if module_valued:
            # Python use: modules are not hyperparameters (they are in the state_dict; the checkpoint names them
            # for load_from_checkpoint). Under LightningCLI the hparams hold their class_path configs and stay.
            self.save_hyperparameters(ignore=module_valued)

        if losses is None:
            losses = []
        elif isinstance(losses, (DistillationLoss, Mapping)):
            losses = [losses]
        losses = [_records.build_loss(loss, f"losses[{i}]") for i, loss in enumerate(losses)]
        for i, loss in enumerate(losses):
            if not isinstance(loss, DistillationLoss):
                raise TypeError(
                    f"Expected `losses[{i}]` to be a DistillationLoss (e.g. cmkd_lightning.losses.CMKDLoss), "
                    f"but got {type(loss).__name__}."
                )
        loss_weights = _defaults.loss_weights_for(losses, loss_weights)
        if len(loss_weights) != len(losses):
            raise ValueError(
                f"Expected `loss_weights` to have one weight per loss ({len(losses)}), but got {len(loss_weights)}."
            )
        if any(not math.isfinite(w) or w < 0 for w in loss_weights):
            raise ValueError(f"Expected `loss_weights` to be finite numbers >= 0, but got {loss_weights}.")
        ce_weight = _defaults.ce_weight_for(losses, ce_weight)
        if not math.isfinite(ce_weight) or ce_weight < 0:
            raise ValueError(f"Expected `ce_weight` to be a finite number >= 0, but got {ce_weight!r}.")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"Expected `optimizer` to be one of {_OPTIMIZERS}, but got {optimizer!r}.")
        weight_decay, momentum = _defaults.optimizer_args_for(optimizer, weight_decay, momentum, nesterov)
        if lr_schedule not in _SCHEDULES:
            raise ValueError(f"Expected `lr_schedule` to be one of {_SCHEDULES}, but got {lr_schedule!r}.")
        if not lr > 0:
            raise ValueError(f"Expected `lr` to be a number > 0, but got {lr!r}.")
        if not isinstance(check_finite, (bool, int)) or check_finite < 0:
            raise ValueError(
                f"Expected `check_finite` to be a bool or an integer >= 0 (check every n-th step), but got "
                f"{check_finite!r}."
            )
        self._check_every = int(check_finite)  # True -> every step, False -> never
        effective = {"loss_weights": loss_weights, "ce_weight": ce_weight, "weight_decay": weight_decay}
        effective.update(momentum=momentum, lr_milestones=list(lr_milestones))
        configs = _records.loss_configs(losses) if losses else None
        if configs is not None:
            effective["losses"] = configs
            self._modules_to_pass.pop("losses", None)  # rebuilt from their configs
        _records.record(self, effective)
        if losses and teacher is None:
            raise ValueError(
                f"Expected a `teacher` when distillation `losses` are given, but got teacher=None and "
                f"{len(losses)} loss(es). Drop `losses` to train with cross-entropy alone."
            )
        if teacher is not None and not losses and ce_weight == 0:
            raise ValueError("Expected `losses` or `ce_weight > 0`: with neither there is nothing to train.")

        self.student = _build_model(student, "student", num_classes)
        self.teacher = _build_model(teacher, "teacher", num_classes)
        if num_classes is None:
            num_classes = _classifier_classes(self.student)
            if num_classes is None:
                raise ValueError(
                    "Expected `num_classes` (the student has no final nn.Linear to infer it from), but got None."
                )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Expected `num_classes` to be an integer >= 2, but got {num_classes!r}.")
        self.num_classes = num_classes
        self.losses = nn.ModuleList(losses)
        self.loss_weights = loss_weights
        self._loss_names = self._unique_names(losses)
        self.ce_weight = float(ce_weight)

        if student_checkpoint is not None:
            from cmkd_lightning.checkpoint import load_weights

            load_weights(self.student, student_checkpoint)
        if self.teacher is not None:
            if teacher_checkpoint is not None:
                from cmkd_lightning.checkpoint import load_weights

                load_weights(self.teacher, teacher_checkpoint, part=teacher_checkpoint_part)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        elif teacher_checkpoint is not None:
            raise ValueError("Expected a `teacher` to load `teacher_checkpoint` into, but got teacher=None.")
        self._check_classifier_sizes()
        self._teacher_cache = None
        if teacher_cache is not None:
            from cmkd_lightning.teacher_cache.store import open_for_module

            self._teacher_cache = open_for_module(teacher_cache, self.teacher, self.num_classes)
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        if compile:
            self.student.compile()
            if self.teacher is not None:
                self.teacher.compile()

        top5 = min(5, num_classes)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_top1", _accuracy(num_classes, 1))
            setattr(self, f"{split}_top5", _accuracy(num_classes, top5))
        self.teacher_top1 = _accuracy(num_classes, 1)
        self.teacher_top5 = _accuracy(num_classes, top5)
        self.best_val_top1 = 0.0
        self._teacher_checked = False
        self._epoch_sums: dict[str, dict[str, Tensor]] = {}
        self._epoch_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ set-up and freezing
    @staticmethod
    def _unique_names(losses: Sequence[DistillationLoss]) -> list[str]:
        names: list[str] = []
        for loss in losses:
            name, k = loss.name, 1
            while name in names:
                name, k = f"{loss.name}_{k}", k + 1
            names.append(name)
        return names

    def _check_classifier_sizes(self) -> None:
        for role in ("student", "teacher"):
            model = getattr(self, role)
            if model is None:
                continue
            classes = _classifier_classes(model)
            if classes is not None and classes != self.num_classes:
                raise ValueError(
                    f"Expected the {role}'s classifier to output `num_classes` = {self.num_classes} classes, "
                    f"but its final linear layer has {classes} outputs."
                )

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
            raise RuntimeError("This DistillationModule has no teacher.")
        with torch.no_grad():
            return self.teacher(x)

    # ------------------------------------------------------------------ losses
    def _check_logits(self, logits: Tensor, role: str, targets: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected the {role} to output logits of shape (N, {self.num_classes}) (`num_classes`), "
                f"but got {tuple(logits.shape)}."
            )
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(
                f"Expected as many {role} logits as targets, but got {logits.shape[0]} and {targets.shape[0]}."
            )

    def compute_losses(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor
    ) -> dict[str, Tensor]:
        """Cross-entropy plus every weighted distillation loss, in float32 outside autocast.

        Returns:
            ``{"loss": total, "ce": ..., "<name>/loss": weighted loss, "<name>/<component>": ...}``.
        """
        out: dict[str, Tensor] = {}
        with _no_autocast(student_logits.device.type):
            zs = student_logits.float()
            ce = F.cross_entropy(zs, targets)
            total = self.ce_weight * ce
            out["ce"] = ce.detach()
            if teacher_logits is not None and len(self.losses):
                zt = teacher_logits.detach().float()
                for name, loss, weight in zip(self._loss_names, self.losses, self.loss_weights):
                    terms = loss(zs, zt, targets)
                    factor = loss.warmup_factor(self.current_epoch)
                    weighted = weight * factor * terms["loss"]
                    total = total + weighted
                    out[f"{name}/loss"] = weighted
                    for key, value in terms.items():
                        if key != "loss":
                            out[f"{name}/{key}"] = value
                    if factor < 1.0:  # made on the device by a fill kernel: no host tensor, no copy
                        out[f"{name}/warmup"] = zs.new_full((), factor)
        out["loss"] = total
        return out

    def _check_due(self, stage: str, batch_idx: int) -> bool:
        """Whether the ``check_finite`` guard runs on this step (host-side arithmetic only)."""
        if self._check_every == 0:
            return False
        step = self.global_step if stage == "train" else batch_idx
        return step % self._check_every == 0

    def _where(self, stage: str, batch_idx: int) -> str:
        if stage == "train":
            return f"train global step {self.global_step} (epoch {self.current_epoch})"
        return f"{stage} batch {batch_idx} (global step {self.global_step}, epoch {self.current_epoch})"

    def _raise_if_not_finite(
        self, terms: dict[str, Tensor], stage: str, student_logits: Tensor | None = None, batch_idx: int = 0
    ) -> None:
        """The ``check_finite`` guard: one host-device sync (a single flag) when everything is finite."""
        flags = [torch.isfinite(t.detach()).all() for t in terms.values()]
        if student_logits is not None:
            flags.append(torch.isfinite(student_logits.detach()).all())
        if bool(torch.stack(flags).all()):
            return
        after = (
            "Training stopped before the optimiser step, so the weights and the last saved checkpoint are intact."
            if stage == "train"
            else f"The weights reached {stage} non-finite or produce non-finite outputs on this batch."
        )
        if student_logits is not None and not bool(torch.isfinite(student_logits.detach()).all()):
            raise FloatingPointError(
                f"Non-finite student logits at {self._where(stage, batch_idx)}: the student's forward pass "
                f"produced NaN/Inf before any loss. {after} Lower the learning rate or check the data."
            )
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
        raise FloatingPointError(
            f"Non-finite loss at {self._where(stage, batch_idx)}: "
            f"{', '.join(f'{stage}/{k}' for k in bad)} is NaN/Inf. {after} Lower the learning rate, check the "
            "data or the teacher checkpoint."
        )

    # ------------------------------------------------------------------ steps
    def _shared_step(self, batch: Any, stage: str, batch_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        student_logits = self.student(x)
        self._check_logits(student_logits, "student", y)
        teacher_logits = None
        if self._teacher_cache is not None and stage == "train":
            teacher_logits = self._teacher_cache.batch_logits(batch, y)
            self._check_logits(teacher_logits, "teacher", y)
        elif self.teacher is not None:
            teacher_logits = self.teacher_forward(x)
            self._check_logits(teacher_logits, "teacher", y)
        terms = self.compute_losses(student_logits, teacher_logits, y)
        if self._check_due(stage, batch_idx):
            self._raise_if_not_finite(terms, stage, student_logits, batch_idx)
        top1, top5 = getattr(self, f"{stage}_top1"), getattr(self, f"{stage}_top5")
        top1.update(student_logits.detach(), y)
        top5.update(student_logits.detach(), y)
        if stage == "val" and teacher_logits is not None:
            self.teacher_top1.update(teacher_logits, y)
            self.teacher_top5.update(teacher_logits, y)
        self._accumulate(stage, terms, y.shape[0])
        return terms

    @override
    def setup(self, stage: str) -> None:
        if self._teacher_cache is not None and stage == "fit":
            self._teacher_cache.check_datamodule(getattr(self.trainer, "datamodule", None))

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # The cached teacher logits are read on the host and travel with the batch: no device->host read.
        return batch if self._teacher_cache is None else self._teacher_cache.attach(batch)

    # ------------------------------------------------------------------ epoch aggregation
    # Per step, only `train/loss_step` and `train/lr` go through `self.log` (each call costs ~0.3 ms of Python);
    # every loss component is summed on the device and logged once per epoch, all-reduced over DDP ranks.
    def _accumulate(self, stage: str, terms: dict[str, Tensor], batch_size: int) -> None:
        sums = self._epoch_sums.setdefault(stage, {})
        for key, value in terms.items():
            weighted = value.detach().float() * batch_size
            sums[key] = weighted if key not in sums else sums[key] + weighted
        self._epoch_counts[stage] = self._epoch_counts.get(stage, 0) + batch_size

    def _log_epoch(self, stage: str) -> dict[str, float]:
        sums = self._epoch_sums.pop(stage, {})
        count = self._epoch_counts.pop(stage, 0)
        logged: dict[str, float] = {}
        if sums:
            keys = sorted(sums)
            totals = torch.stack([sums[k] for k in keys] + [sums[keys[0]].new_full((), float(count))])
            if self.trainer.world_size > 1:
                totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
            means = (totals[:-1] / totals[-1]).tolist()  # one device read per epoch for every component
            for key, mean in zip(keys, means):
                logged[f"{stage}/{key}"] = mean
        metrics = [
            (f"{stage}/acc_top1", getattr(self, f"{stage}_top1")),
            (f"{stage}/acc_top5", getattr(self, f"{stage}_top5")),
        ]
        if stage == "val":
            metrics += [("val/teacher_acc_top1", self.teacher_top1), ("val/teacher_acc_top5", self.teacher_top5)]
        for key, metric in metrics:
            if metric.update_called:
                logged[key] = float(metric.compute())  # torchmetrics syncs its states over DDP ranks here
            metric.reset()
        for key, value in logged.items():
            self.log(key, value, on_step=False, on_epoch=True, sync_dist=False, prog_bar=key == "val/acc_top1")
        return logged

    @override
    def on_train_epoch_start(self) -> None:
        self._epoch_sums.pop("train", None)
        self._epoch_counts.pop("train", None)

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        terms = self._shared_step(batch, "train", batch_idx)
        self.log("train/loss_step", terms["loss"].detach(), on_step=True, on_epoch=False, prog_bar=True)
        # The learning rate is only read on the steps Lightning sends to the logger (every `log_every_n_steps`).
        if self._trainer is not None and self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            lr = self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"]
            self.log("train/lr", lr, on_step=True, on_epoch=False)
        return terms["loss"]

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", batch_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", batch_idx)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.student(x).softmax(dim=-1)

    @override
    def on_validation_epoch_start(self) -> None:
        self._epoch_sums.pop("val", None)
        self._epoch_counts.pop("val", None)

    @override
    def on_validation_epoch_end(self) -> None:
        logged = self._log_epoch("val")
        top1 = logged.get("val/acc_top1")
        if top1 is not None and not self.trainer.sanity_checking:
            self.best_val_top1 = max(self.best_val_top1, top1)
            self.log("val/acc_top1_best", self.best_val_top1, sync_dist=False)
        teacher_top1 = logged.get("val/teacher_acc_top1")
        if teacher_top1 is not None and not self._teacher_checked:
            self._teacher_checked = True
            chance = 1.0 / self.num_classes
            rank_zero_info(f"Teacher validation Top-1: {100 * teacher_top1:.2f}% (chance {100 * chance:.2f}%)")
            if teacher_top1 < self.hparams.get("teacher_chance_factor", 2.0) * chance:
                rank_zero_warn(
                    f"The teacher's validation Top-1 is {100 * teacher_top1:.2f}%, near chance level "
                    f"({100 * chance:.2f}%): wrong checkpoint, wrong `num_classes` or a different input "
                    "normalisation than the teacher was trained with?"
                )

    # ------------------------------------------------------------------ optimisation
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # Every trainable parameter of the module: the student, plus whatever a subclass adds (e.g. a projection
        # head); the teacher is excluded because its parameters never require grad.
        teacher_ids = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.get("nesterov", False)
            )
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        max_epochs = self.trainer.max_epochs
        schedule, message = _defaults.schedule_for(hp.lr_schedule, hp.lr_milestones, max_epochs)
        if message is not None:
            if message.startswith("warn:"):
                rank_zero_warn(message[len("warn:") :])
            else:
                rank_zero_info(message)
        if schedule == "none":
            return opt
        if schedule == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.lr_milestones), gamma=hp.lr_decay)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs or 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cmkd_best_val_top1"] = self.best_val_top1
        if self._modules_to_pass:
            checkpoint[_records.MODULES_KEY] = dict(self._modules_to_pass)
        if not self.hparams.get("save_teacher_in_checkpoint", False):
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_top1 = float(checkpoint.get("cmkd_best_val_top1", 0.0))
        state = checkpoint.get("state_dict", {})
        if self.teacher is not None and not any(k.startswith("teacher.") for k in state):
            # The teacher was not saved: keep the one this module was built with (teacher_checkpoint or the
            # module passed in) so strict loading of the student succeeds.
            for key, value in self.teacher.state_dict().items():
                state[f"teacher.{key}"] = value

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, which names the ``nn.Module`` arguments to pass again.

        A checkpoint of a module built from Python with ``nn.Module`` networks stores their weights, not the objects:
        instead of a bare missing-argument error it says which ones to pass (e.g. ``student=...``). The recorded
        ``loss_weights`` belong to the recorded losses: passing ``losses`` without ``loss_weights`` gives the new
        losses their recommended weights.
        """
        if "losses" in kwargs and "loss_weights" not in kwargs:
            kwargs["loss_weights"] = None
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (TypeError, ValueError) as err:
            hint = _records.reload_hint(cls, checkpoint_path, kwargs)
            if hint is None:
                raise
            raise type(err)(f"{hint} ({err})") from err
