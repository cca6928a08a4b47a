"""Epoch metrics of :class:`~cmkd_lightning.DistillationModule`: loss-term means and accuracies, via torchmetrics.

Per step only ``train/loss_step`` and ``train/lr`` go through ``self.log`` (each call costs ~0.3 ms of Python); the
loss terms are summed on the device by :class:`EpochMeans` and read once per epoch after torchmetrics' DDP sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override


class EpochMeans(Metric):
    r"""Sample-weighted means of named scalars over an epoch: :math:`\bar v_k = \sum_b n_b v_{k,b} / \sum_b n_b`.

    The names are learnt from the updates and kept sorted, so every DDP rank holds the same layout; the sums and
    counts are two tensors summed over ranks by torchmetrics, and :meth:`compute` reads them from the device once.
    A name missing from some updates is averaged over the samples of the updates that had it.

    Example:
        >>> means = EpochMeans()
        >>> means.update({"loss": torch.tensor(1.0), "ce": torch.tensor(2.0)}, 2)
        >>> means.update({"loss": torch.tensor(4.0)}, 1)
        >>> means.compute()
        {'ce': 2.0, 'loss': 2.0}
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(sync_on_compute=True, compute_with_cache=False)
        self.add_state("sums", default=torch.zeros(0), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(0), dist_reduce_fx="sum")
        self.keys: list[str] = []

    def _grow(self, names: list[str], like: Tensor) -> None:
        """Add ``names`` to the layout, keeping it sorted (host-side bookkeeping and device copies only)."""
        keys = sorted({*self.keys, *names})
        zero = like.new_zeros(())
        old = {k: i for i, k in enumerate(self.keys)}
        sums, counts = self.sums.to(like), self.counts.to(like)
        self.sums = torch.stack([sums[old[k]] if k in old else zero for k in keys])
        self.counts = torch.stack([counts[old[k]] if k in old else zero for k in keys])
        self.keys = keys

    def update(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        """Add ``batch_size`` samples of each scalar in ``terms`` (nothing is read from the device)."""
        values = {k: v.detach().float().reshape(()) for k, v in terms.items()}
        if not values:
            return
        like = next(iter(values.values()))
        if any(k not in self.keys for k in values) or self.sums.device != like.device:
            self._grow([k for k in values if k not in self.keys], like)
        if len(values) == len(self.keys):  # the usual step: every name present
            self.sums = self.sums + torch.stack([values[k] for k in self.keys]) * batch_size
            self.counts = self.counts + batch_size
            return
        zero = like.new_zeros(())
        self.sums = self.sums + torch.stack([values.get(k, zero) for k in self.keys]) * batch_size
        present = torch.stack([like.new_ones(()) if k in values else zero for k in self.keys])
        self.counts = self.counts + present * batch_size

    def compute(self) -> dict[str, float]:
        """``{name: mean}``, after torchmetrics summed the states over DDP ranks: one device read."""
        if not self.keys:
            return {}
        means = (self.sums / self.counts.clamp_min(1)).tolist()
        return dict(zip(self.keys, means))

    def reset(self) -> None:
        """Forget the epoch: torchmetrics' reset of the states, and the names."""
        super().reset()
        self.keys = []


def accuracy(num_classes: int, top_k: int) -> MulticlassAccuracy:
    """Micro-averaged top-k accuracy without torchmetrics' input checks (they read the targets: host syncs)."""
    return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)


class EpochLogging:
    """The epoch hooks of :class:`~cmkd_lightning.DistillationModule`: log each stage's means and accuracies.

    Expects ``<stage>_means`` (:class:`EpochMeans`), ``<stage>_top1`` / ``<stage>_top5`` and ``teacher_top1`` /
    ``teacher_top5`` (:func:`accuracy`) on the module.
    """

    best_val_top1: float
    _teacher_checked: bool
    num_classes: int
    hparams: Any
    trainer: Any
    log: Any

    def _log_epoch(self, stage: str) -> dict[str, float]:
        means = getattr(self, f"{stage}_means")
        logged = {f"{stage}/{k}": v for k, v in means.compute().items()} if means.update_called else {}
        keys = {f"{stage}/acc_top1": f"{stage}_top1", f"{stage}/acc_top5": f"{stage}_top5"}
        if stage == "val":
            keys.update({"val/teacher_acc_top1": "teacher_top1", "val/teacher_acc_top5": "teacher_top5"})
        for key, name in keys.items():
            metric = getattr(self, name)
            if metric.update_called:
                logged[key] = float(metric.compute())  # torchmetrics syncs its states over DDP ranks here
            metric.reset()
        means.reset()
        for key, value in logged.items():
            self.log(key, value, on_step=False, on_epoch=True, sync_dist=False, prog_bar=key == "val/acc_top1")
        return logged

    @override
    def on_train_epoch_start(self) -> None:
        self.train_means.reset()

    @override
    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @override
    def on_validation_epoch_end(self) -> None:
        logged = self._log_epoch("val")
        top1, teacher_top1 = logged.get("val/acc_top1"), logged.get("val/teacher_acc_top1")
        if top1 is not None and not self.trainer.sanity_checking:
            self.best_val_top1 = max(self.best_val_top1, top1)
            self.log("val/acc_top1_best", self.best_val_top1, sync_dist=False)
        if teacher_top1 is not None and not self._teacher_checked:
            self._teacher_checked, chance = True, 1.0 / self.num_classes
            rank_zero_info(f"Teacher validation Top-1: {100 * teacher_top1:.2f}% (chance {100 * chance:.2f}%)")
            if teacher_top1 < self.hparams.get("teacher_chance_factor", 2.0) * chance:
                rank_zero_warn(
                    f"The teacher's validation Top-1 is {100 * teacher_top1:.2f}%, near chance level "
                    f"({100 * chance:.2f}%): wrong checkpoint, wrong `num_classes` or a different input "
                    "normalisation than the teacher was trained with?"
                )
