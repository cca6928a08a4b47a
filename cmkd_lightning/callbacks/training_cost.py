"""Fig. 7: what a distillation run costs: time per epoch, throughput, peak memory and parameter counts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from cmkd_lightning.callbacks._capture import batch_inputs
from cmkd_lightning.callbacks._figures import run_directory
from cmkd_lightning.utilities.validation import check_filename, check_optional_path, check_str

_MB = 2.0**20


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` numbers of parameter elements; shared parameters count once.

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> layer.bias.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> parameter_counts(layer)
        (6, 2)
    """
    trainable = frozen = 0
    for parameter in module.parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    return trainable, frozen


class TrainingCost(Callback):
    r"""Fig. 7 of the paper: training time, throughput, peak memory and trainable vs frozen parameters.

    Per training epoch the callback measures the wall time from ``on_train_epoch_start`` to
    ``on_train_epoch_end`` minus the time spent in validation inside it (so the number is the training cost
    alone; CUDA is synchronised before the clock is read), counts the training samples (the first dimension of
    each batch's ``x``), and reads the peak memory: ``torch.cuda.max_memory_allocated`` (reset at each epoch
    start) on a CUDA device, otherwise the largest resident set size of the process (``psutil``) sampled after
    every training batch. Parameters are counted once, at the start of training: ``trainable`` are those with
    ``requires_grad`` (the student), ``frozen`` the rest (the teacher).

    Under DDP the samples are summed over processes (global throughput), while time and memory are the maximum
    over processes (the slowest process, the fullest device).

    Resume: :attr:`history` is saved in the trainer's checkpoint (``state_dict``), so after ``--ckpt_path last``
    the totals cover every epoch of the run (an epoch cut by the kill counts from the resume on).

    At the end of training (``on_train_end``) :attr:`summary` holds the totals and :attr:`history` the epochs,
    and both are written as JSON to ``dirpath`` (default: the run's own directory: the logger's versioned
    folder, or the W&B run's files folder, uploaded with the run) as ``filename``, so KD and CMKD
    runs can be compared side by side.

    Paper: Fig. 7 (training time, accuracy and extra parameters of KD methods, ResNet32x4 / ResNet8x4).

    Logged metrics (``prefix`` defaults to ``"cost/"``), once per training epoch:
        - ``cost/epoch_time_s``: training time of the epoch in seconds (validation excluded).
        - ``cost/samples_per_s``: training samples per second, all processes together.
        - ``cost/peak_mem_mb``: peak CUDA memory allocated, or peak process RSS on CPU, in MiB.
        - ``cost/params_trainable``, ``cost/params_frozen``: parameter elements with / without gradients.

    Attributes:
        history: one dict per epoch with the logged values.
        summary: after training: ``epochs``, ``total_train_time_s``, ``mean_epoch_time_s``,
            ``mean_samples_per_s``, ``peak_mem_mb``, ``memory`` (``"cuda_max_allocated"`` or ``"cpu_rss"``),
            ``params_trainable``, ``params_frozen``, ``world_size``, ``device``.
        json_path: the JSON file written last.

    Args:
        dirpath: folder of the JSON file instead of the run directory.
        filename: JSON file name.
        prefix: prepended to the logged keys.
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str = "training_cost.json", prefix: str = "cost/"
    ) -> None:
        self.dirpath = check_optional_path(dirpath, "dirpath")
        self.filename = check_filename(filename, "filename", ".json")
        self.prefix = check_str(prefix, "prefix")
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.json_path: Path | None = None
        self._params = (0, 0)
        self._process = psutil.Process()
        self._cuda: torch.device | None = None
        self._epoch_start: float | None = None
        self._val_start: float | None = None
        self._val_time = 0.0
        self._samples = 0
        self._peak_rss = 0

    def _now(self) -> float:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        return time.perf_counter()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # a new run; Lightning restores a resumed one's history (load_state_dict) after this hook
            self.history, self.summary = [], {}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params = parameter_counts(pl_module)
        self._cuda = pl_module.device if pl_module.device.type == "cuda" else None

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._cuda is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda)
        self._samples, self._val_time, self._val_start = 0, 0.0, None
        self._peak_rss = self._process.memory_info().rss
        self._epoch_start = self._now()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += batch_inputs(batch).shape[0]
        if self._cuda is None:
            self._peak_rss = max(self._peak_rss, self._process.memory_info().rss)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_start is not None and not trainer.sanity_checking:
            self._val_start = self._now()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_start is not None:
            self._val_time += self._now() - self._val_start
            self._val_start = None

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_start is None:
            return
        elapsed = self._now() - self._epoch_start - self._val_time
        self._epoch_start = None
        if self._cuda is not None:
            peak = torch.cuda.max_memory_allocated(self._cuda)
        else:
            peak = max(self._peak_rss, self._process.memory_info().rss)
        device = pl_module.device
        samples = trainer.strategy.reduce(torch.tensor(float(self._samples), device=device), reduce_op="sum")
        maxima = trainer.strategy.reduce(torch.tensor([elapsed, peak / _MB], device=device), reduce_op="max")
        epoch_time, peak_mb = float(maxima[0]), float(maxima[1])
        entry = {
            "epoch": trainer.current_epoch + 1,  # counted from 1, as RunSummary and the figures
            "epoch_time_s": epoch_time,
            "samples_per_s": float(samples) / epoch_time if epoch_time > 0 else float("nan"),
            "samples": int(samples),
            "peak_mem_mb": peak_mb,
            "params_trainable": self._params[0],
            "params_frozen": self._params[1],
        }
        self.history.append(entry)
        for name in ("epoch_time_s", "samples_per_s", "peak_mem_mb", "params_trainable", "params_frozen"):
            pl_module.log(f"{self.prefix}{name}", float(entry[name]), on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epochs = self.history
        total = sum(e["epoch_time_s"] for e in epochs)
        self.summary = {
            "epochs": len(epochs),
            "total_train_time_s": total,
            "mean_epoch_time_s": total / len(epochs) if epochs else float("nan"),
            "mean_samples_per_s": sum(e["samples"] for e in epochs) / total if total > 0 else float("nan"),
            "peak_mem_mb": max((e["peak_mem_mb"] for e in epochs), default=float("nan")),
            "memory": "cuda_max_allocated" if self._cuda is not None else "cpu_rss",
            "params_trainable": self._params[0],
            "params_frozen": self._params[1],
            "world_size": trainer.world_size,
            "device": str(pl_module.device.type),
        }
        directory = run_directory(trainer, self.dirpath)  # a collective under DDP: every process calls it
        if not trainer.is_global_zero:
            return
        if self.dirpath is None and isinstance(trainer.logger, WandbLogger):
            directory = Path(trainer.logger.experiment.dir)  # the W&B run's own files (`trainer.log_dir` is shared)
        directory.mkdir(parents=True, exist_ok=True)
        self.json_path = directory / self.filename
        self.json_path.write_text(json.dumps({"summary": self.summary, "epochs": epochs}, indent=2) + "\n")
