"""Checkpoints that are really written: a writable directory before training, a file after every save, finite weights.

Lightning 2.6 writes checkpoints through ``lightning.fabric.utilities.cloud_io._atomic_save``, which catches
``PermissionError`` and drops it unless it is a cross-device rename: with a read-only checkpoint directory a run
finishes with exit code 0 and no checkpoint. :class:`CheckpointGuard` closes that hole for every
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` of the trainer, and the ``cmkd`` command adds it to every run.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor
from typing_extensions import override

from cmkd_lightning.callbacks._figures import running_epoch
from cmkd_lightning.errors import ArgumentTypeError, CMKDError

__all__ = ["CheckpointGuard", "CheckpointWriteError", "NonFiniteCheckpointError", "VerifiedCheckpointIO"]


class CheckpointWriteError(CMKDError, OSError):
    """A checkpoint could not be written, or the file is missing or empty after the save."""


class NonFiniteCheckpointError(CMKDError, RuntimeError):
    """The weights or buffers about to be saved hold NaN or infinite values."""


def first_non_finite(state_dict: dict[str, Any]) -> tuple[str, Tensor] | None:
    """The first ``(name, tensor)`` of a state_dict holding a NaN or an infinity, or None if all are finite.

    Only floating-point and complex tensors are checked (integers are always finite).

    Example:
        >>> first_non_finite({"w": torch.ones(2), "running_var": torch.tensor([1.0, float("inf")])})[0]
        'running_var'
        >>> first_non_finite({"w": torch.ones(2), "steps": torch.tensor(3)}) is None
        True
    """
    for name, value in state_dict.items():
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                return name, value
    return None


class VerifiedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves raise the real error and are checked afterwards.

    A local checkpoint is written to a hidden partial file in the target folder (``.<name>.partial-<pid>``),
    flushed to disk and renamed over the target, so a process killed mid-write leaves the previous checkpoint
    intact; the next save of the same file deletes such a leftover once its process no longer runs
    (:func:`remove_stale_partials`). Any ``OSError`` (read-only folder, full disk, a file where a folder is
    expected) becomes a :class:`CheckpointWriteError` naming the path; after the rename the file must exist and
    be non-empty. Remote paths (``s3://`` ...) use Lightning's own writer, then must exist.

    Example:
        >>> import tempfile
        >>> io = VerifiedCheckpointIO()
        >>> path = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(1)}}, path)
        >>> path.stat().st_size > 0
        True
    """

    def _write(self, checkpoint: dict[str, Any], file: Any) -> None:
        """Serialise ``checkpoint`` into the open binary ``file``."""
        torch.save(checkpoint, file)

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise ArgumentTypeError(
                "Expected `storage_options` to be None for VerifiedCheckpointIO, but got "
                f"{type(storage_options).__name__}."
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            if not self._fs_exists(path):
                raise CheckpointWriteError(
                    f"The checkpoint '{path}' was not written (the file is missing after saving)."
                )
            return
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(target)
            with open(partial, "wb") as file:
                self._write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except (OSError, RuntimeError) as err:  # torch.save reports a short write (a full disk) as RuntimeError
            partial.unlink(missing_ok=True)
            raise CheckpointWriteError(_write_failure(target, err)) from err
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if not target.is_file() or target.stat().st_size == 0:
            raise CheckpointWriteError(f"The checkpoint '{target}' was not written (missing or empty after saving).")

    @staticmethod
    def _fs_exists(path: str | os.PathLike[str]) -> bool:
        return bool(get_filesystem(path).exists(str(path)))


def _is_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on the local file system (not ``s3://``, ``gs://``, ...), by fsspec's own resolution."""
    protocol = get_filesystem(path).protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def _write_failure(target: Path, err: BaseException) -> str:
    """Why writing ``target`` failed, in words a person can act on: a full disk, a read-only folder, ..."""
    free = None
    try:
        free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    except OSError:
        pass
    errno_ = getattr(err, "errno", None)
    if errno_ == errno.ENOSPC or (free is not None and free < 1 << 20 and not isinstance(err, PermissionError)):
        return (
            f"Could not write the checkpoint '{target}': the disk is full ({free if free is not None else 0} bytes "
            "free). Free some space (or choose another folder with the ModelCheckpoint's `dirpath`) and run again; "
            "the checkpoints saved before this one are intact."
        )
    reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200]
    return (
        f"Could not write the checkpoint '{target}': {reason}. Make the folder writable (or choose another with the "
        "ModelCheckpoint's `dirpath`) and run again; nothing was saved."
    )


def remove_stale_partials(target: Path) -> list[Path]:
    """Delete the hidden partial files of ``target`` whose writing process no longer runs; return them.

    A process killed while writing leaves ``.<name>.partial-<pid>`` behind. Only files for this very target are
    considered, and only where the pid is not a running process of this machine (POSIX; elsewhere nothing is
    deleted). A partial of a live process, such as another run's save in progress, is never touched.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / f".last.ckpt.partial-{os.getpid()}").write_bytes(b"")  # this process runs: kept
        0
        >>> remove_stale_partials(folder / "last.ckpt")
        []
    """
    if os.name != "posix":
        return []
    removed = []
    for partial in target.parent.glob(f".{glob.escape(target.name)}.partial-*"):
        pid = partial.name.rsplit("-", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: existence check only
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
            removed.append(partial)
        except OSError:  # e.g. PermissionError: the process runs under another user
            continue
    return removed


def probe_writable(directory: str | os.PathLike[str]) -> str | None:
    """Create ``directory`` if needed and write and delete a probe file in it; the reason it failed, or None.

    Example:
        >>> probe_writable(tempfile.mkdtemp()) is None
        True
    """
    if not _is_local(directory):
        return None
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".cmkd-write-test-", dir=folder)
        try:
            os.write(handle, b"0")
        finally:
            os.close(handle)
            os.unlink(name)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


class CheckpointGuard(Callback):
    """Make every checkpoint save of the run either produce a finite, complete file or stop the run with an error.

    - At setup the trainer's checkpoint writer becomes :class:`VerifiedCheckpointIO` (if it is Lightning's default
      ``TorchCheckpointIO``): failed writes raise :class:`CheckpointWriteError` instead of passing silently.
    - At the start of ``fit`` every ``ModelCheckpoint`` folder is created and a probe file is written and removed;
      if that fails, the run stops before the first step with :class:`CheckpointWriteError` naming the folder.
    - Before each save the checkpoint's ``state_dict`` (parameters and buffers) is checked: a NaN or an infinity
      raises :class:`NonFiniteCheckpointError` naming the stage, epoch, global step and the first offending
      tensor, and nothing is written (the last good checkpoint stays).
    - The checkpoint records the module's class and the logger's name, version and W&B run name
      (``callbacks['CheckpointGuard']``), so ``cmkd fit --ckpt_path`` can check that it continues the same model
      and method, and continue its logger run.

    The finiteness check reads one boolean per tensor from the device at each save (not at each step).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[CheckpointGuard()], logger=False, enable_progress_bar=False)
        >>> any(isinstance(c, CheckpointGuard) for c in trainer.callbacks)
        True
    """

    def __init__(self) -> None:
        self.run: dict[str, Any] = {}
        self._trainer: Trainer | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = VerifiedCheckpointIO()

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        problems = []
        if trainer.is_global_zero:
            for callback in trainer.checkpoint_callbacks:
                dirpath = getattr(callback, "dirpath", None)
                reason = probe_writable(dirpath) if dirpath is not None else None
                if reason is not None:
                    problems.append(f"'{dirpath}' ({reason})")
        problems = trainer.strategy.broadcast(problems)
        if problems:
            raise CheckpointWriteError(
                f"Expected the checkpoint folder {' and '.join(problems)} to be writable before training starts. "
                "Make it writable or set another one (the ModelCheckpoint's `dirpath`); nothing was trained."
            )

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            name, value = bad
            finite = value[torch.isfinite(value)]
            largest = f"{float(finite.abs().max()):.3g}" if finite.numel() else "none"
            stage = trainer.state.stage.value if trainer.state.stage is not None else trainer.state.fn
            raise NonFiniteCheckpointError(
                f"Refusing to save a checkpoint at stage '{stage}', {running_epoch(trainer)}, global step "
                f"{trainer.global_step}: `{name}` holds {int((~torch.isfinite(value)).sum())} non-finite values "
                f"(of {value.numel()}; largest finite magnitude {largest}). Training diverged; lower the learning "
                "rate or resume from the last good checkpoint."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return dict(self.run)
        module = trainer.lightning_module
        self.run = {"module": f"{type(module).__module__}.{type(module).__qualname__}"} if module is not None else {}
        logger = trainer.logger
        if isinstance(logger, Logger) and not isinstance(logger, DummyLogger):  # fast_dev_run: no logger run
            self.run.update(logger=type(logger).__name__, name=str(logger.name), version=str(logger.version))
            if isinstance(logger, WandbLogger):
                self.run["run_name"] = logger.experiment.name
        return dict(self.run)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run = dict(state_dict)
