"""Table V: accuracy of the student (and teacher) under the CIFAR-100-C corruptions, and the drop from clean."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from cmkd_lightning._validation import (
    check_bool,
    check_filename,
    check_non_negative_int,
    check_optional_path,
    check_path,
    check_positive_int,
    check_str,
)
from cmkd_lightning.callbacks._capture import LogitCapture, batch_inputs, batch_targets, has_teacher
from cmkd_lightning.callbacks._figures import run_directory
from datamodules.cifar100 import cifar100_test_transform
from datamodules.cifar100c import CIFAR100C_CORRUPTIONS, CIFAR100CDataset, check_corruption

_SEVERITIES = (1, 2, 3, 4, 5)
#: The five corruptions of the paper's Table V, in its column order.
PAPER_CORRUPTIONS: tuple[str, ...] = ("brightness", "contrast", "elastic_transform", "fog", "pixelate")
_PRESETS = {"all": CIFAR100C_CORRUPTIONS, "paper": PAPER_CORRUPTIONS}


def _check_corruptions(values: Any) -> tuple[str, ...]:
    if values is None:
        return CIFAR100C_CORRUPTIONS
    if isinstance(values, str):
        if values in _PRESETS:
            return _PRESETS[values]
        raise ValueError(
            f"Expected `corruptions` to be 'all', 'paper', None or a list of corruption names, but got {values!r}."
        )
    if not isinstance(values, Sequence):
        raise TypeError(
            f"Expected `corruptions` to be 'all', 'paper', None or a list of corruption names, but got {values!r}."
        )
    if not values:
        raise ValueError(f"Expected `corruptions` to be a non-empty list, but got {list(values)}.")
    for value in values:
        check_corruption(value, "corruptions")
    if len(set(values)) != len(values):
        raise ValueError(f"Expected `corruptions` to hold no duplicates, but got {list(values)}.")
    return tuple(values)


def _check_severities(values: Any) -> tuple[int, ...]:
    if values is None:
        return _SEVERITIES
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"Expected `severities` to be a list of ints in 1..5 or None, but got {values!r}.")
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v not in _SEVERITIES for v in values):
        raise ValueError(f"Expected `severities` to be a non-empty list of ints in 1..5, but got {list(values)}.")
    if len(set(values)) != len(values):
        raise ValueError(f"Expected `severities` to hold no duplicates, but got {list(values)}.")
    return tuple(values)


def robustness_rows(
    clean: dict[str, float], corrupted: dict[str, dict[str, dict[int, float]]]
) -> tuple[list[str], list[list[Any]]]:
    """Table V layout: per model, clean accuracy, each corruption's mean over severities and its drop, in %.

    Args:
        clean: model name -> clean Top-1 (fraction; NaN when unknown).
        corrupted: model name -> corruption -> severity -> Top-1 (fraction).

    Returns:
        ``(columns, rows)`` with columns ``model, clean, <c>, <c>_drop, ..., mean, mean_drop`` and values in
        percent rounded to 2 decimals (``drop = corrupted - clean``, negative when accuracy falls).
    """
    corruptions = list(next(iter(corrupted.values())))
    columns = ["model", "clean"]
    for name in [*corruptions, "mean"]:
        columns += [name, f"{name}_drop"]
    rows = []
    for model, per_corruption in corrupted.items():
        means = {c: sum(s.values()) / len(s) for c, s in per_corruption.items()}
        means["mean"] = sum(means.values()) / len(means)
        row: list[Any] = [model, round(100 * clean[model], 2)]
        for name in [*corruptions, "mean"]:
            row += [round(100 * means[name], 2), round(100 * (means[name] - clean[model]), 2)]
        rows.append(row)
    return columns, rows


class CorruptionRobustness(Callback):
    r"""Table V of the paper: Top-1 under CIFAR-100-C corruptions, mean over severities, and the drop from clean.

    Runs in ``on_test_epoch_end`` of ``trainer.test(...)`` (on the clean CIFAR-100 test set, e.g. with
    :class:`~datamodules.CIFAR100DataModule`): the hook where callbacks may still ``log`` and the test dataloader
    has just been read. The clean accuracy is counted from the logits of the module's own test steps (forward
    hooks, no extra pass; it equals ``test/acc_top1`` over all test dataloaders), or computed on ``clean_dataset``
    when given. Then, for every corruption and severity, :class:`~datamodules.CIFAR100CDataset` (with the
    CIFAR-100 normalisation) is evaluated with the student and, with ``evaluate_teacher``, the teacher in the
    same pass, in eval mode under ``torch.no_grad()``. Under DDP each process evaluates every
    ``world_size``-th image and the counts are summed, so the result equals one process. The cost is one
    forward per network over ``len(corruptions) x len(severities) x 10,000`` images (750,000 for the full set).

    Outputs: logged scalars (fractions, like ``test/acc_top1``); a CSV in the layout of Table V (percent):
    ``model, clean, <corruption>, <corruption>_drop, ..., mean, mean_drop`` with one row per model, written to
    ``dirpath`` (default: the run directory) as ``filename``; and, with a ``WandbLogger``, the same table as a
    ``wandb.Table`` under ``robustness/table``.

    Paper: Table V (brightness, contrast, elastic, fog, pixelate on ResNet32x4 / ResNet8x4:
    ``corruptions="paper"``); CIFAR-100-C from Hendrycks & Dietterich, ICLR 2019.

    Logged metrics (``prefix`` defaults to ``"robustness/"``):
        - ``robustness/clean``: the student's clean Top-1.
        - ``robustness/<corruption>``: the student's Top-1 on a corruption, mean over the severities.
        - ``robustness/mean``: mean over the corruptions.
        - ``robustness/teacher/clean``, ``robustness/teacher/<corruption>``, ``robustness/teacher/mean``: the
          teacher, with ``evaluate_teacher``.

    Attributes:
        results: model -> corruption -> severity -> Top-1 (fraction); ``clean``: model -> clean Top-1;
        csv_path: the CSV written last.

    Args:
        root: the extracted ``CIFAR-100-C`` folder (``<corruption>.npy`` and ``labels.npy``).
        corruptions: ``"all"`` or ``None`` (default) for the 15 of the benchmark, ``"paper"`` for the five of
            Table V (:data:`PAPER_CORRUPTIONS`), or a list of corruption names.
        severities: severities in 1..5; ``None`` for all five.
        batch_size: batch size of the corruption passes.
        num_workers: DataLoader workers of the corruption passes.
        evaluate_teacher: also evaluate the teacher (a module without one warns and evaluates the student).
        clean_dataset: ``(x, y)`` dataset for the clean accuracy instead of the test batches.
        dirpath: folder of the CSV instead of the run directory.
        filename: CSV file name.
        prefix: prepended to every logged key.
    """

    def __init__(
        self,
        root: str | Path,
        corruptions: str | Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        evaluate_teacher: bool = False,
        clean_dataset: Dataset | None = None,
        dirpath: str | Path | None = None,
        filename: str = "robustness.csv",
        prefix: str = "robustness/",
    ) -> None:
        self.root = check_path(root, "root")
        self.corruptions = _check_corruptions(corruptions)
        self.severities = _check_severities(severities)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_workers = check_non_negative_int(num_workers, "num_workers")
        self.evaluate_teacher = check_bool(evaluate_teacher, "evaluate_teacher")
        if clean_dataset is not None and not (
            hasattr(clean_dataset, "__getitem__") and hasattr(clean_dataset, "__len__")
        ):
            raise TypeError(
                f"Expected `clean_dataset` to be a map-style torch Dataset or None, but got "
                f"{type(clean_dataset).__name__}."
            )
        self.clean_dataset = clean_dataset
        self.dirpath = check_optional_path(dirpath, "dirpath")
        self.filename = check_filename(filename, "filename", ".csv")
        self.prefix = check_str(prefix, "prefix")
        self.results: dict[str, dict[str, dict[int, float]]] = {}
        self.clean: dict[str, float] = {}
        self.csv_path: Path | None = None
        self._capture = LogitCapture()
        self._models: tuple[str, ...] = ("student",)
        self._clean_counts: Tensor | None = None

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "test":
            return
        needed = [self.root / f"{c}.npy" for c in self.corruptions] + [self.root / "labels.npy"]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Expected the CIFAR-100-C files under `root` = {self.root}, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing. Download CIFAR-100-C.tar from "
                "https://zenodo.org/records/3555552 and pass the extracted CIFAR-100-C folder."
            )
        self._models = ("student",)
        if self.evaluate_teacher:
            if has_teacher(pl_module):
                self._models = ("student", "teacher")
            else:
                rank_zero_warn(
                    "CorruptionRobustness: `evaluate_teacher=True` but the module has no `teacher`; "
                    "only the student is evaluated."
                )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._capture.detach()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._capture.detach()

    # ------------------------------------------------------------------ clean accuracy from the test steps
    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clean_counts = torch.zeros(len(self._models) + 1, dtype=torch.float64, device=pl_module.device)
        if self.clean_dataset is None:
            self._capture.attach(pl_module)

    @override
    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._capture.clear()

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.clean_dataset is not None or self._clean_counts is None:
            return
        student, teacher = self._capture.logits(pl_module, batch_inputs(batch), teacher="teacher" in self._models)
        self._clean_counts += self._correct(batch_targets(batch).to(student.device), student, teacher)

    # ------------------------------------------------------------------ evaluation
    def _correct(self, targets: Tensor, student: Tensor, teacher: Tensor | None) -> Tensor:
        counts = [(student.argmax(dim=-1) == targets).sum()]
        if teacher is not None:
            counts.append((teacher.argmax(dim=-1) == targets).sum())
        counts.append(torch.tensor(targets.shape[0], device=targets.device))
        return torch.stack(counts).to(torch.float64)

    @torch.no_grad()
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, dataset: Dataset) -> Tensor:
        """``[correct per model..., n]`` over this process's share of ``dataset`` (every world_size-th item)."""
        shard = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
        loader = DataLoader(shard, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        device = pl_module.device
        counts = torch.zeros(len(self._models) + 1, dtype=torch.float64, device=device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            teacher = pl_module.teacher_forward(x) if "teacher" in self._models else None
            counts += self._correct(y, pl_module(x), teacher)
        return counts

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._capture.detach()
        was_training = pl_module.training
        pl_module.eval()
        try:
            if self.clean_dataset is not None:
                clean_counts = self._evaluate(trainer, pl_module, self.clean_dataset)
            else:
                clean_counts = self._clean_counts
            transform = cifar100_test_transform()
            keys = [(c, s) for c in self.corruptions for s in self.severities]
            counts = [clean_counts] + [
                self._evaluate(trainer, pl_module, CIFAR100CDataset(self.root, c, s, transform)) for c, s in keys
            ]
        finally:
            pl_module.train(was_training)
        totals = trainer.strategy.reduce(torch.stack(counts), reduce_op="sum").cpu()  # one all-reduce
        accuracy = totals[:, :-1] / totals[:, -1:].clamp_min(1)
        accuracy[totals[:, -1] == 0] = float("nan")
        self.clean = {model: float(accuracy[0, m]) for m, model in enumerate(self._models)}
        self.results = {model: {c: {} for c in self.corruptions} for model in self._models}
        for row, (corruption, severity) in enumerate(keys, start=1):
            for m, model in enumerate(self._models):
                self.results[model][corruption][severity] = float(accuracy[row, m])
        columns, rows = robustness_rows(self.clean, self.results)
        self._log(pl_module)

        directory = run_directory(trainer, self.dirpath)  # a collective under DDP: every process calls it
        if not trainer.is_global_zero:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.csv_path = directory / self.filename
        with self.csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=f"{self.prefix}table", columns=columns, data=rows, step=trainer.global_step)

    def _log(self, pl_module: LightningModule) -> None:
        for model in self._models:
            model_prefix = self.prefix if model == "student" else f"{self.prefix}{model}/"
            means = {c: sum(per.values()) / len(per) for c, per in self.results[model].items()}
            values = {"clean": self.clean[model], **means, "mean": sum(means.values()) / len(means)}
            for name, value in values.items():
                pl_module.log(f"{model_prefix}{name}", value, on_step=False, on_epoch=True, sync_dist=False)
