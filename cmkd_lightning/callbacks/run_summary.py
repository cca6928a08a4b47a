"""Print what a run produced when it ends: accuracies, loss components, wall time and where the files went."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError

_ACCURACY_KEYS = ("acc_top1", "acc_top5", "teacher_acc_top1", "teacher_acc_top5", "acc_top1_best")
_SKIP_KEYS = {"loss_step", "lr"}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class RunSummary(Callback):
    r"""At the end of ``fit``, ``validate`` and ``test``, print a short table and the paths of the run's files.

    After ``fit``: best and last validation Top-1 / Top-5 (the best epoch is the one with the highest
    ``val/acc_top1``), the teacher's validation Top-1, the last epoch's losses (every ``train/*`` and ``val/*``
    key ending in ``loss``, and ``ce``) and diagnostics (the other non-accuracy keys, e.g. ``cmkd/hard_fraction``;
    ``docs/METRICS.md`` lists them), the wall time, the checkpoint paths of every
    :class:`~lightning.pytorch.callbacks.ModelCheckpoint`, the saved config (from a save-config callback with a
    ``saved_path`` attribute, as ``cmkd``'s) and each logger's run directory, with the ``wandb sync`` command for
    an offline W&B run. After ``validate`` / ``test``: that stage's accuracies and losses, wall time and paths.

    When the trainer has no progress bar (``cmkd`` turns it off when stdout is not a terminal, e.g. in a log
    file), it also prints one line per validation epoch, so a log shows progress without bar fragments.
    Prints on global rank 0 only. The last summary is kept in :attr:`summary` (a dict).

    Resume: the per-epoch records and the wall time so far are saved in the trainer's checkpoint
    (``state_dict``), so after ``--ckpt_path last`` the best epoch, the table and the wall time cover the whole
    run, not only its resumed part. Epochs are counted from 1 everywhere it prints ("epoch 3/5" is the third).

    Args:
        epoch_lines: print a line per validation epoch; ``None`` (default): only when there is no progress bar.
        stream: where to print (default: ``sys.stdout`` at print time).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[RunSummary()], logger=False, enable_progress_bar=False)
    """

    def __init__(self, epoch_lines: bool | None = None, stream: TextIO | None = None) -> None:
        if epoch_lines is not None and not isinstance(epoch_lines, bool):
            raise ArgumentTypeError(f"Expected `epoch_lines` to be a bool or None, but got {epoch_lines!r}.")
        self.epoch_lines = epoch_lines
        self.stream = stream
        self.summary: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._seconds_before = 0.0  # wall time of the run before a resume
        self._history: list[dict[str, float]] = []

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._start

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(record) for record in self._history], "seconds": self._seconds()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = [dict(record) for record in state_dict.get("history", [])]
        self._seconds_before = float(state_dict.get("seconds", 0.0))

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning restores a resumed run's state (load_state_dict) after this hook.
        self._start = time.perf_counter()
        self._seconds_before = 0.0
        self._history = []

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._report(trainer, "validate", "val")
            return
        metrics = self._metrics(trainer, "val")
        record = {"epoch": trainer.current_epoch + 1, **metrics}
        self._history.append(record)
        show = self.epoch_lines if self.epoch_lines is not None else trainer.progress_bar_callback is None
        if show:
            parts = [f"epoch {record['epoch']}/{trainer.max_epochs}"]
            for key, label in (("acc_top1", "val Top-1"), ("acc_top5", "Top-5")):
                if key in metrics:
                    parts.append(f"{label} {100 * metrics[key]:.2f} %")
            if "loss" in metrics:
                parts.append(f"val loss {metrics['loss']:.4f}")
            parts.append(f"{_duration(self._seconds())} elapsed")
            self._print("  ".join(parts))

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._report(trainer, "fit", "val")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._report(trainer, "test", "test")

    # ------------------------------------------------------------------ work
    @staticmethod
    def _metrics(trainer: Trainer, stage: str) -> dict[str, float]:
        out = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(f"{stage}/") and (number := _scalar(value)) is not None:
                out[key[len(stage) + 1 :]] = number
        return out

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stdout
        print(text, file=stream, flush=True)

    def _report(self, trainer: Trainer, stage: str, metric_stage: str) -> None:
        seconds = self._seconds()
        metrics = self._metrics(trainer, metric_stage)
        train = self._metrics(trainer, "train") if stage == "fit" else {}
        summary: dict[str, Any] = {"stage": stage, "seconds": seconds, "epochs": trainer.current_epoch}
        device = trainer.strategy.root_device
        where = f"{device.type}, {torch.get_num_threads()} torch thread(s)" if device.type == "cpu" else str(device)
        title = f"cmkd {stage} finished in {_duration(seconds)} ({where})"
        if stage == "fit":
            title = f"cmkd fit finished: {trainer.current_epoch} epoch(s) in {_duration(seconds)} ({where})"
        lines = [title]

        rows: list[tuple[str, ...]] = []
        if stage == "fit" and self._history:
            best = max(self._history, key=lambda r: r.get("acc_top1", float("-inf")))
            last = self._history[-1]
            summary["best"], summary["last"] = best, last
            rows.append(("", f"best (epoch {best['epoch']})", f"last (epoch {last['epoch']})"))
            for key, label in (("acc_top1", "val Top-1 %"), ("acc_top5", "val Top-5 %")):
                if key in last:
                    rows.append((label, f"{100 * best.get(key, float('nan')):.2f}", f"{100 * last[key]:.2f}"))
            if "teacher_acc_top1" in last:
                rows.append(("teacher val Top-1 %", "", f"{100 * last['teacher_acc_top1']:.2f}"))
        elif stage != "fit":
            summary[metric_stage] = metrics
            for key, label in (
                ("acc_top1", "Top-1 %"),
                ("acc_top5", "Top-5 %"),
                ("teacher_acc_top1", "teacher Top-1 %"),
            ):
                if key in metrics:
                    rows.append((f"{metric_stage} {label}", f"{100 * metrics[key]:.2f}"))
        keys = sorted(
            {k for k in (*train, *metrics) if k not in _SKIP_KEYS and not k.startswith(_ACCURACY_KEYS)},
            key=lambda k: (k != "loss", k),
        )
        # Loss values (docs/METRICS.md: keys ending in `loss`, and the cross-entropy) apart from diagnostics.
        groups = {
            "losses": [k for k in keys if k.endswith("loss") or k == "ce"],
            "diagnostics": [k for k in keys if not (k.endswith("loss") or k == "ce")],
        }
        for group, members in groups.items():
            if not members:
                continue
            summary[group] = {k: {"train": train.get(k), metric_stage: metrics.get(k)} for k in members}
            header = (f"{group}, last epoch", "train", metric_stage) if stage == "fit" else (group, metric_stage)
            rows.append(header)
            for key in members:
                values = ([train.get(key)] if stage == "fit" else []) + [metrics.get(key)]
                rows.append((f"  {key}", *("-" if v is None else f"{v:.4f}" for v in values)))
        if rows:
            widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
            for row in rows:
                cells = [row[0].ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in enumerate(row[1:])]
                lines.append("  " + "  ".join(cells).rstrip())

        paths = self._paths(trainer, stage)
        summary["paths"] = paths
        label_width = max((len(k) for k in paths), default=0)
        for label, value in paths.items():
            lines.append(f"{label + ':':<{label_width + 1}} {value}")
        self.summary = summary
        self._print("\n".join(lines))

    @staticmethod
    def _paths(trainer: Trainer, stage: str) -> dict[str, str]:
        paths: dict[str, str] = {}
        if stage == "fit":
            for callback in trainer.checkpoint_callbacks:
                if not isinstance(callback, ModelCheckpoint):
                    continue
                if callback.best_model_path:
                    label = f"best checkpoint ({callback.monitor})" if callback.monitor else "checkpoint (latest)"
                    paths[label] = callback.best_model_path
                if callback.last_model_path and callback.last_model_path != callback.best_model_path:
                    paths["last checkpoint"] = callback.last_model_path
            if not any("checkpoint" in k for k in paths):
                paths["checkpoint"] = "none saved (checkpointing is off)"
        for callback in trainer.callbacks:
            saved = getattr(callback, "saved_path", None)
            if saved:
                paths["config"] = str(saved)
                break
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                experiment = logger.experiment
                run_dir = Path(experiment.dir).parent if getattr(experiment, "dir", None) else None
                if run_dir is None:
                    continue
                offline = getattr(getattr(experiment, "settings", None), "mode", None) == "offline" or (
                    os.environ.get("WANDB_MODE") == "offline"
                )
                if offline:
                    paths["W&B run (offline)"] = str(run_dir)
                    paths["upload it with"] = f"wandb sync {run_dir}"
                else:
                    paths["W&B run"] = str(run_dir)
                    url = getattr(experiment, "url", None)
                    if url:
                        paths["W&B page"] = str(url)
            else:
                log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
                if log_dir:
                    paths[f"{type(logger).__name__} logs"] = str(log_dir)
        return paths
