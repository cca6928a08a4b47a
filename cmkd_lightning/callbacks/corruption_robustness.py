"""Table V: accuracy of the student (and teacher) under the CIFAR-100-C corruptions, and the drop from clean."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from cmkd_lightning.callbacks._capture import StepLogitsCallback, batch_targets, has_teacher
from cmkd_lightning.callbacks._figures import epoch_number, run_directory
from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.utilities.validation import (
    check_bool,
    check_filename,
    check_non_negative_int,
    check_optional_path,
    check_positive_int,
    check_str,
)

#: The five corruptions of the paper's Table V, in its column order (the data module's ``corruptions``).
PAPER_CORRUPTIONS: tuple[str, ...] = ("brightness", "contrast", "elastic_transform", "fog", "pixelate")
_NAME = re.compile(r"^(?P<corruption>.+)/s(?P<severity>\d+)$")
_EXPECTED = (
    "a LightningDataModule with `test_names` and one test dataloader per name (e.g. "
    "datamodules.CIFAR100CDataModule), or a mapping from '<corruption>/s<severity>' names to datasets"
)


def _parse_names(names: Any) -> list[tuple[str, int]]:
    """``"<corruption>/s<severity>"`` names -> ``(corruption, severity)`` pairs, in order."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise InvalidArgumentError(
            f"Expected `data` to name at least one '<corruption>/s<severity>' set, but got {names!r}."
        )
    pairs = []
    for name in names:
        match = _NAME.match(name) if isinstance(name, str) else None
        if match is None:
            raise InvalidArgumentError(
                f"Expected `data` to name its sets '<corruption>/s<severity>' (e.g. 'fog/s3'), but got {name!r}."
            )
        pairs.append((match["corruption"], int(match["severity"])))
    if len(set(pairs)) != len(pairs):
        raise InvalidArgumentError(f"Expected `data` to name each set once, but got {list(names)}.")
    return pairs


def _is_dataset(value: Any) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__")


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


class CorruptionRobustness(StepLogitsCallback):
    r"""Table V of the paper: Top-1 under CIFAR-100-C corruptions, mean over severities, and the drop from clean.

    Runs in ``on_test_epoch_end`` of ``trainer.test(...)`` (on the clean test set, e.g. with
    :class:`~datamodules.CIFAR100DataModule`). The clean accuracy is counted from the logits of the module's own
    test steps (their ``outputs``, no extra pass; it equals ``test/acc_top1`` over all test dataloaders), or computed
    on ``clean_dataset`` when given. Then every corrupted set of ``data`` is evaluated with the student and, with
    ``evaluate_teacher``, the teacher in the same pass, in eval mode under ``torch.no_grad()``, through the
    trainer: batches move with ``trainer.strategy.batch_to_device`` (the module's transfer hooks), the forward
    runs in the precision plugin's ``test_step_context()`` (``16-mixed``/``bf16-mixed`` autocast as in the test
    steps), and progress shows on the trainer's progress bar (TQDM or Rich) when it has one. Under DDP each process
    evaluates every ``world_size``-th image and the counts are summed, so the result equals one process. The
    callback itself knows nothing of CIFAR: ``data`` says what to evaluate.

    Outputs: logged scalars (fractions, like ``test/acc_top1``); a CSV in the layout of Table V (percent):
    ``model, clean, <corruption>, <corruption>_drop, ..., mean, mean_drop`` with one row per model, written to
    ``dirpath`` (default: the run directory) as ``filename``; and, with a ``WandbLogger``, the same table as a
    ``wandb.Table`` under ``robustness/table``.

    Paper: Table V (brightness, contrast, elastic, fog, pixelate on ResNet32x4 / ResNet8x4: the data module's
    ``corruptions`` = :data:`PAPER_CORRUPTIONS`); CIFAR-100-C from Hendrycks & Dietterich, ICLR 2019.

    Logged metrics (``prefix`` defaults to ``"robustness/"``):
        - ``robustness/clean``: the student's clean Top-1.
        - ``robustness/<corruption>``: the student's Top-1 on a corruption, mean over the severities.
        - ``robustness/mean``: mean over the corruptions.
        - ``robustness/teacher/clean``, ``robustness/teacher/<corruption>``, ``robustness/teacher/mean``: the
          teacher, with ``evaluate_teacher``.

    Attributes:
        results: model -> corruption -> severity -> Top-1 (fraction); ``clean``: model -> clean Top-1;
        csv_path: the CSV written last; corruptions, severities: what ``data`` holds; history: one entry per
        evaluation (saved in the trainer's checkpoint).

    Args:
        data: what to evaluate: a data module with ``test_names`` (``"<corruption>/s<severity>"``) and one test
            dataloader per name, such as ``datamodules.CIFAR100CDataModule(data_dir=..., corruptions=[...])``
            (its ``setup("test")`` runs when the test starts, and reports missing files), or a mapping from such
            names to ``(x, y)`` datasets.
        evaluate_teacher: also evaluate the teacher (a module without one warns and evaluates the student).
        clean_dataset: ``(x, y)`` dataset for the clean accuracy instead of the test batches.
        batch_size: batch size for datasets given as a mapping (a data module's loaders keep theirs).
        num_workers: DataLoader workers for datasets given as a mapping.
        dirpath: folder of the CSV instead of the run directory.
        filename: CSV file name.
        prefix: prepended to every logged key.

    Example:
        >>> from datamodules import CIFAR100CDataModule  # doctest: +SKIP
        >>> data = CIFAR100CDataModule("data/CIFAR-100-C", corruptions=list(PAPER_CORRUPTIONS))  # doctest: +SKIP
        >>> callback = CorruptionRobustness(data, evaluate_teacher=True)  # doctest: +SKIP
    """

    needs_teacher = False

    def __init__(
        self,
        data: LightningDataModule | Mapping[str, Dataset],
        evaluate_teacher: bool = False,
        clean_dataset: Dataset | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        dirpath: str | Path | None = None,
        filename: str = "robustness.csv",
        prefix: str = "robustness/",
    ) -> None:
        super().__init__()
        if isinstance(data, LightningDataModule):
            if not hasattr(data, "test_names"):
                raise ArgumentTypeError(
                    f"Expected `data` to be {_EXPECTED}, but got {type(data).__name__} without `test_names`."
                )
            names = list(data.test_names)
        elif isinstance(data, Mapping):
            if not all(_is_dataset(value) for value in data.values()):
                raise ArgumentTypeError(f"Expected `data` to be {_EXPECTED}, but a value is not a map-style dataset.")
            names = list(data)
        else:
            raise ArgumentTypeError(f"Expected `data` to be {_EXPECTED}, but got {type(data).__name__}.")
        self.data = data
        self._keys = _parse_names(names)
        self.corruptions = tuple(dict.fromkeys(c for c, _ in self._keys))
        self.severities = tuple(sorted({s for _, s in self._keys}))
        self.evaluate_teacher = check_bool(evaluate_teacher, "evaluate_teacher")
        if clean_dataset is not None and not _is_dataset(clean_dataset):
            raise ArgumentTypeError(
                f"Expected `clean_dataset` to be a map-style torch Dataset or None, but got "
                f"{type(clean_dataset).__name__}."
            )
        self.clean_dataset = clean_dataset
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_workers = check_non_negative_int(num_workers, "num_workers")
        self.dirpath = check_optional_path(dirpath, "dirpath")
        self.filename = check_filename(filename, "filename", ".csv")
        self.prefix = check_str(prefix, "prefix")
        self.results: dict[str, dict[str, dict[int, float]]] = {}
        self.clean: dict[str, float] = {}
        self.csv_path: Path | None = None
        self._models: tuple[str, ...] = ("student",)
        self._clean_counts: Tensor | None = None

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "test":
            return
        if isinstance(self.data, LightningDataModule):
            self.data.setup("test")  # reports missing files before any test step runs
        self._models = ("student",)
        if self.evaluate_teacher:
            if has_teacher(pl_module):
                self._models = ("student", "teacher")
            else:
                rank_zero_warn(
                    "CorruptionRobustness: `evaluate_teacher=True` but the module has no `teacher`; "
                    "only the student is evaluated."
                )

    def _datasets(self) -> list[tuple[Dataset, int, int]]:
        """``(dataset, batch_size, num_workers)`` per entry of :attr:`_keys`, in order."""
        if isinstance(self.data, LightningDataModule):
            loaders = self.data.test_dataloader()
            loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
            if len(loaders) != len(self._keys):
                raise InvalidArgumentError(
                    f"Expected the data module to return {len(self._keys)} test dataloaders (one per `test_names`), "
                    f"but got {len(loaders)}."
                )
            return [(loader.dataset, loader.batch_size or self.batch_size, loader.num_workers) for loader in loaders]
        return [(self.data[f"{c}/s{s}"], self.batch_size, self.num_workers) for c, s in self._keys]

    # ------------------------------------------------------------------ clean accuracy from the test steps
    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clean_counts = torch.zeros(len(self._models) + 1, dtype=torch.float64, device=pl_module.device)

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
        student, teacher = self.batch_logits(pl_module, outputs, batch, teacher="teacher" in self._models)
        self._clean_counts += self._correct(batch_targets(batch).to(student.device), student, teacher)

    # ------------------------------------------------------------------ evaluation
    def _correct(self, targets: Tensor, student: Tensor, teacher: Tensor | None) -> Tensor:
        counts = [(student.argmax(dim=-1) == targets).sum()]
        if teacher is not None:
            counts.append((teacher.argmax(dim=-1) == targets).sum())
        counts.append(torch.tensor(targets.shape[0], device=targets.device))
        return torch.stack(counts).to(torch.float64)

    def _loaders(self, trainer: Trainer, sets: list[tuple[Dataset, int, int]]) -> list[DataLoader]:
        """The share of every set this process reads: every world_size-th item, no padding (DDP equals one process)."""
        return [
            DataLoader(
                Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size)),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
            )
            for dataset, batch_size, num_workers in sets
        ]

    @torch.no_grad()
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, loaders: list[DataLoader]) -> list[Tensor]:
        """``[correct per model..., n]`` per loader, through the trainer's device transfer, precision and bar."""
        advance = self._progress(trainer, sum(len(loader) for loader in loaders), len(loaders))
        results = []
        try:
            for index, loader in enumerate(loaders):
                counts = torch.zeros(len(self._models) + 1, dtype=torch.float64, device=pl_module.device)
                for batch in loader:
                    x, y = trainer.strategy.batch_to_device(batch, dataloader_idx=index)[:2]
                    with trainer.precision_plugin.test_step_context():
                        student = pl_module(x)
                        teacher = pl_module.teacher_forward(x) if "teacher" in self._models else None
                    counts += self._correct(y, student.float(), None if teacher is None else teacher.float())
                    advance(1)
                results.append(counts)
        finally:
            advance(None)
        return results

    def _progress(self, trainer: Trainer, total: int, sets: int) -> Callable[[int | None], None]:
        """A bar on the trainer's progress bar (TQDM or Rich); the callable advances it, ``None`` closes it."""
        bar_callback = trainer.progress_bar_callback
        description = f"{type(self).__name__}: {sets} sets"
        if bar_callback is None or not bar_callback.is_enabled or not trainer.is_global_zero:
            return lambda steps: None
        if isinstance(bar_callback, TQDMProgressBar):
            bar = bar_callback.init_test_tqdm()
            bar.reset(total=total)
            bar.set_description(description)
            return lambda steps: bar.close() if steps is None else bar.update(steps)
        progress = getattr(bar_callback, "progress", None)  # RichProgressBar's rich.progress.Progress
        if isinstance(bar_callback, RichProgressBar) and progress is not None:
            task = progress.add_task(description, total=total)
            return lambda steps: progress.refresh() if steps is None else progress.update(task, advance=steps)
        return lambda steps: None

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        was_training = pl_module.training
        pl_module.eval()
        try:
            sets = self._datasets()
            if self.clean_dataset is not None:
                sets = [(self.clean_dataset, self.batch_size, self.num_workers), *sets]
            counts = self._evaluate(trainer, pl_module, self._loaders(trainer, sets))
            if self.clean_dataset is None:
                counts = [self._clean_counts, *counts]
        finally:
            pl_module.train(was_training)
        totals = trainer.strategy.reduce(torch.stack(counts), reduce_op="sum").cpu()  # one all-reduce
        accuracy = totals[:, :-1] / totals[:, -1:].clamp_min(1)
        accuracy[totals[:, -1] == 0] = float("nan")
        self.clean = {model: float(accuracy[0, m]) for m, model in enumerate(self._models)}
        self.results = {model: {c: {} for c in self.corruptions} for model in self._models}
        for row, (corruption, severity) in enumerate(self._keys, start=1):
            for m, model in enumerate(self._models):
                self.results[model][corruption][severity] = float(accuracy[row, m])
        self.history.append({"epoch": epoch_number(trainer), "clean": dict(self.clean), "results": self.results})
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
