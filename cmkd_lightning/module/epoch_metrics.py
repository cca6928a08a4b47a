"""Epoch metrics of :class:`~cmkd_lightning.DistillationModule`: loss-term means and accuracies, via torchmetrics.

Per step only ``train/loss_step`` and ``train/lr`` go through ``self.log`` (each call costs ~0.3 ms of Python); the
loss terms are summed on the device by :class:`EpochMeans` and read once per epoch after torchmetrics' DDP sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError


class EpochMeans(Metric):
    r"""Sample-weighted means of named scalars over an epoch: :math:`\bar v_k = \sum_b n_b v_{k,b} / \sum_b n_b`.

    One slot per name, in sorted order: two torchmetrics states, ``sums`` and ``counts`` (``(K,)``, summed over DDP
    ranks). ``keys`` are the names known when the metric is made; a name first met in an :meth:`update` gets a slot
    from then on (the slots survive :meth:`reset`, which only zeroes them). Under DDP the ranks agree on their
    names before the states are summed (:meth:`sync`), so the means are right even when ranks saw different names.
    A name missing from some updates is averaged over the samples of the updates that had it; a name without
    samples this epoch is left out of :meth:`compute`.

    Args:
        keys: the names expected in the updates.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute`` defaults to ``True``).

    Example:
        >>> means = EpochMeans(["loss"])
        >>> means.update({"loss": torch.tensor(1.0), "ce": torch.tensor(2.0)}, 2)
        >>> means.update({"loss": torch.tensor(4.0)}, 1)
        >>> means.compute()
        {'ce': 2.0, 'loss': 2.0}
    """

    full_state_update = False

    def __init__(self, keys: Iterable[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("sync_on_compute", True)
        kwargs.setdefault("compute_with_cache", False)
        super().__init__(**kwargs)
        names = [keys] if isinstance(keys, str) else list(keys)
        if isinstance(keys, str) or not all(isinstance(k, str) for k in names):
            raise ArgumentTypeError(f"Expected `keys` to be strings, but got {names!r}.")
        self.keys: tuple[str, ...] = tuple(sorted(set(names)))
        self._slots = {k: i for i, k in enumerate(self.keys)}
        self.add_state("sums", default=torch.zeros(len(self.keys)), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(self.keys)), dist_reduce_fx="sum")

    def _add_keys(self, names: Iterable[str]) -> None:
        """Give ``names`` slots, keeping the layout sorted and the sums so far (device copies only, no reads)."""
        keys = tuple(sorted({*self.keys, *names}))
        if keys == self.keys:
            return
        zero = self.sums.new_zeros(())
        sums = [self.sums[self._slots[k]] if k in self._slots else zero for k in keys]
        counts = [self.counts[self._slots[k]] if k in self._slots else zero for k in keys]
        # Re-registered through torchmetrics' public `add_state`: `reset` and the DDP sum use the new layout.
        self.add_state("sums", default=self.sums.new_zeros(len(keys)), dist_reduce_fx="sum")
        self.add_state("counts", default=self.counts.new_zeros(len(keys)), dist_reduce_fx="sum")
        self.sums, self.counts = torch.stack(sums), torch.stack(counts)
        self.keys, self._slots = keys, {k: i for i, k in enumerate(keys)}

    def vector(self, terms: Mapping[str, Tensor]) -> Tensor | None:
        """``terms`` as one vector ``(K,)`` in :attr:`keys` order, in the states' dtype, for :meth:`update`.

        Names not seen before get slots first. ``None`` when some slot has no value in ``terms`` (then pass the
        mapping to :meth:`update`). One stack, nothing read from the device: the module shares this vector between
        the means and its ``check_finite`` guard.
        """
        if any(k not in self._slots for k in terms):
            self._add_keys(terms)
        if len(terms) != len(self.keys) or not terms:
            return None
        with torch.no_grad():
            values = torch.stack([t if (t := terms[k]).ndim == 0 else t.reshape(()) for k in self.keys])
        return values if values.dtype == self.sums.dtype else values.to(self.sums.dtype)

    def update(self, terms: Mapping[str, Tensor] | Tensor, batch_size: int) -> None:
        """Add ``batch_size`` samples of each scalar in ``terms`` (nothing is read from the device).

        Args:
            terms: ``{name: scalar tensor}``, or :meth:`vector` of such a mapping (every name present).
            batch_size: the samples each value stands for.
        """
        if isinstance(terms, Tensor):
            if terms.shape != (len(self.keys),):
                raise InvalidArgumentError(
                    f"Expected `terms` as a tensor to hold one value per name {list(self.keys)} (shape "
                    f"({len(self.keys)},), from `EpochMeans.vector`), but got shape {tuple(terms.shape)}."
                )
            values: Tensor | None = terms
        else:
            values = self.vector(terms)
        # Out of place: a state made under `inference_mode` (an evaluation epoch's reset) refuses in-place updates
        # outside it.
        if values is not None:  # the usual step: every name present; two adds
            self.sums = torch.add(self.sums, values, alpha=batch_size)
            self.counts = self.counts + batch_size
            return
        if not terms:
            return
        zero = self.sums.new_zeros(())
        one = self.sums.new_ones(())
        values = torch.stack([terms[k].detach().float().reshape(()) if k in terms else zero for k in self.keys])
        present = torch.stack([one if k in terms else zero for k in self.keys])
        self.sums = torch.add(self.sums, values, alpha=batch_size)
        self.counts = torch.add(self.counts, present, alpha=batch_size)

    @override
    def sync(
        self,
        dist_sync_fn: Callable[..., Any] | None = None,
        process_group: Any | None = None,
        should_sync: bool = True,
        distributed_available: Callable[[], bool] | None = None,
    ) -> None:
        """Sum the states over ranks (torchmetrics), after the ranks agreed on one layout: the union of their names."""
        available = distributed_available or self.distributed_available_fn
        if should_sync and callable(available) and available():
            group = process_group or self.process_group
            gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
            torch.distributed.all_gather_object(gathered, list(self.keys), group=group)
            self._add_keys(k for names in gathered for k in names)
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def compute(self) -> dict[str, float]:
        """``{name: mean}`` of the names with samples, after torchmetrics summed the states over ranks: one read."""
        if not self.keys:
            return {}
        means, counts = torch.stack([self.sums / self.counts.clamp_min(1), self.counts]).tolist()
        return {k: m for k, m, n in zip(self.keys, means, counts) if n > 0}


def accuracy(num_classes: int, top_k: int) -> MulticlassAccuracy:
    """Micro-averaged top-k accuracy without torchmetrics' input checks (they read the targets: host syncs)."""
    return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)


def epoch_metrics(num_classes: int, keys: Iterable[str]) -> nn.ModuleDict:
    """All epoch metrics of :class:`~cmkd_lightning.DistillationModule` in one container (one model-summary row).

    ``<split>_top1`` / ``<split>_top5`` (:func:`accuracy`) for ``train``, ``val``, ``test`` and ``teacher`` (the
    teacher on the validation set), and ``<stage>_means`` (:class:`EpochMeans` over ``keys``) per stage.

    Example:
        >>> sorted(epoch_metrics(10, ["loss"]))[:3]
        ['teacher_top1', 'teacher_top5', 'test_means']
    """
    keys = list(keys)
    metrics: dict[str, Metric] = {}
    for split in ("train", "val", "test", "teacher"):
        metrics[f"{split}_top1"] = accuracy(num_classes, 1)
        metrics[f"{split}_top5"] = accuracy(num_classes, min(5, num_classes))
    for stage in ("train", "val", "test"):
        metrics[f"{stage}_means"] = EpochMeans(keys)
    return nn.ModuleDict(metrics)


class EpochLogging:
    """The epoch hooks of :class:`~cmkd_lightning.DistillationModule`: log each stage's means and accuracies.

    Expects ``epoch_metrics`` (:func:`epoch_metrics`) on the module.
    """

    best_val_top1: float
    _teacher_checked: bool
    num_classes: int
    hparams: Any
    trainer: Any
    log: Any
    epoch_metrics: nn.ModuleDict

    def _log_epoch(self, stage: str) -> dict[str, float]:
        means = self.epoch_metrics[f"{stage}_means"]
        logged = {f"{stage}/{k}": v for k, v in means.compute().items()} if means.update_called else {}
        keys = {f"{stage}/acc_top1": f"{stage}_top1", f"{stage}/acc_top5": f"{stage}_top5"}
        if stage == "val":
            keys.update({"val/teacher_acc_top1": "teacher_top1", "val/teacher_acc_top5": "teacher_top5"})
        for key, name in keys.items():
            metric = self.epoch_metrics[name]
            if metric.update_called:
                logged[key] = float(metric.compute())  # torchmetrics syncs its states over DDP ranks here
            metric.reset()
        means.reset()
        for key, value in logged.items():
            self.log(key, value, on_step=False, on_epoch=True, sync_dist=False, prog_bar=key == "val/acc_top1")
        return logged

    @override
    def on_train_epoch_start(self) -> None:
        self.epoch_metrics["train_means"].reset()

    @override
    def on_validation_epoch_start(self) -> None:
        self.epoch_metrics["val_means"].reset()

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @override
    def on_validation_epoch_end(self) -> None:
        logged = self._log_epoch("val")
        if self.trainer.sanity_checking:  # a few batches: neither a best accuracy nor the teacher's
            return
        top1, teacher_top1 = logged.get("val/acc_top1"), logged.get("val/teacher_acc_top1")
        if top1 is not None:
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
