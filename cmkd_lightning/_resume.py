"""Where a ``cmkd`` run writes and what it resumes: one logger folder per run, ``--ckpt_path last`` that finds it.

Used by :mod:`cmkd_lightning.cli`. A run's checkpoints go (by default) to ``<save_dir>/<name>/<version>/checkpoints``
(Lightning's layout); ``<version>`` is ``version_<k>`` for the CSV and TensorBoard loggers and the run id for W&B.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = ["ResumeError", "adopt_run_of", "find_last_checkpoint", "reserve_version"]

_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")


class ResumeError(FileNotFoundError):
    """``--ckpt_path last`` was given but there is no checkpoint to resume from."""


def _logger_root(trainer: Trainer, logger: Logger) -> Path:
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)


def _fixed_version(logger: Logger) -> str | None:
    """The version (W&B id) the user set, without creating the W&B run or a new version folder."""
    if isinstance(logger, WandbLogger):
        return logger._id
    version = getattr(logger, "_version", None)
    if version is None:
        return None
    return version if isinstance(version, str) else f"version_{version}"


def _run_name(path: Path) -> str | None:
    """The W&B run name recorded by CheckpointGuard in a checkpoint (read lazily, tensors memory-mapped)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return checkpoint.get("callbacks", {}).get("CheckpointGuard", {}).get("run_name")
    except Exception:  # an unreadable candidate is not this run's: skip it
        return None


# module hyperparameters that tune a run rather than define the model and method: a resume may change them
_TUNING = frozenset(
    {
        "optimizer",
        "lr_scheduler",
        "check_finite",
        "channels_last",
        "compile",
        "teacher_cache",
        "teacher_chance_factor",
        "save_teacher_in_checkpoint",
        "_instantiator",
    }
)


def _hyperparameters(path: Path) -> dict[str, Any] | None:
    """The module hyperparameters stored in a checkpoint (read lazily, tensors memory-mapped); None if unreadable."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        hparams = checkpoint.get("hyper_parameters")
        return dict(hparams) if isinstance(hparams, Mapping) else None
    except Exception:  # an unreadable candidate is not this run's: skip it
        return None


def model_differences(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The hyperparameters that define the model and method (all but ``_TUNING``) in which two runs differ.

    Example:
        >>> model_differences({"losses": ["kd"], "optimizer": "sgd"}, {"losses": ["cmkd"], "optimizer": "adam"})
        ['losses']
    """
    if stored is None:
        return ["hyper_parameters (none readable in the checkpoint)"]

    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    keys = (set(stored) | set(current)) - _TUNING
    return sorted(k for k in keys if canonical(stored.get(k)) != canonical(current.get(k)))


def find_last_checkpoint(
    trainer: Trainer, hparams: Mapping[str, Any] | None = None
) -> tuple[Path | None, list[Path], list[tuple[Path, list[str]]]]:
    """The newest ``last*.ckpt`` this configuration wrote, the folders searched and the candidates passed over.

    With a ``ModelCheckpoint(dirpath=...)`` that folder is searched; without one (checkpoints under the logger's run
    folder), every run folder ``<save_dir>/<name>/*/checkpoints`` of the logger is, restricted to the version (W&B
    id) given on the command line if any, and for W&B to checkpoints of runs with the same run name. A folder that
    is not a logger run's (``dirpath``, or ``<default_root_dir>/checkpoints`` without a logger) can hold runs of
    other configs: there, given the module's ``hparams``, only checkpoints of the same model and method count (the
    others are returned with the hyperparameters they differ in).
    """
    searched: list[Path] = []
    candidates: list[Path] = []
    passed_over: list[tuple[Path, list[str]]] = []
    logger = trainer.logger
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None or logger is None:
            folder = Path(callback.dirpath) if callback.dirpath is not None else Path(trainer.default_root_dir)
            folder = folder if callback.dirpath is not None else folder / "checkpoints"
            searched.append(folder)
            for path in (p for p in folder.glob("last*.ckpt") if _LAST.match(p.name)):
                differences = [] if hparams is None else model_differences(_hyperparameters(path), hparams)
                if differences:
                    passed_over.append((path, differences))
                else:
                    candidates.append(path)
            continue
        root = _logger_root(trainer, logger)
        version = _fixed_version(logger)
        pattern = f"{version}/checkpoints" if version is not None else "*/checkpoints"
        searched.append(root / pattern)
        found = [p for p in root.glob(f"{pattern}/last*.ckpt") if _LAST.match(p.name)]
        if isinstance(logger, WandbLogger) and version is None:
            name = logger._wandb_init.get("name")
            found = [p for p in found if _run_name(p) == name]
        candidates += found
    passed_over.sort(key=lambda item: item[0].stat().st_mtime, reverse=True)
    if not candidates:
        return None, searched, passed_over
    return max(candidates, key=lambda p: p.stat().st_mtime), searched, passed_over


def adopt_run_of(trainer: Trainer, checkpoint: Path) -> str | None:
    """Continue the logger run a checkpoint belongs to: same W&B id, same CSV / TensorBoard version folder.

    Applies when ``checkpoint`` lies in ``<save_dir>/<name>/<version>/checkpoints`` of the trainer's logger and no
    version was set by the user. Returns the adopted version, or None.
    """
    logger = trainer.logger
    if logger is None or _fixed_version(logger) is not None:
        return None
    checkpoint = checkpoint.resolve()
    root = _logger_root(trainer, logger).resolve()
    if checkpoint.parent.name != "checkpoints" or checkpoint.parent.parent.parent != root:
        return None
    version = checkpoint.parent.parent.name
    if isinstance(logger, WandbLogger):
        if logger._experiment is not None:
            return None
        logger._id = version
        logger._wandb_init["id"] = version
        logger._wandb_init["resume"] = "allow"
        return version
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        match = re.fullmatch(r"version_(\d+)", version)
        logger._version = int(match.group(1)) if match else version
        return version
    return None


def reserve_version(logger: Any) -> int | None:
    """Claim the next free ``version_<k>`` folder of a CSV / TensorBoard logger by creating it (``mkdir`` is atomic).

    Two runs started together would otherwise both pick ``version_0``. Only global rank 0 reserves (the other
    ranks read the folder from it). Returns the version, or None if the logger's version was already set.
    """
    if not isinstance(logger, (CSVLogger, TensorBoardLogger)) or logger._version is not None:
        return None
    if rank_zero_only.rank != 0:
        return None
    root = Path(logger.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = logger._get_next_version()
    while True:
        try:
            (root / f"version_{version}").mkdir()
            break
        except FileExistsError:
            version += 1
    logger._version = version
    return version
