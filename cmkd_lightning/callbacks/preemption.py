"""Pre-emption that loses no work: SIGTERM / SIGUSR1 save a resumable checkpoint and end the run non-zero."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from cmkd_lightning.callbacks._figures import running_epoch

__all__ = ["Preemption", "preemption_checkpoint_path"]


def preemption_checkpoint_path(trainer: Trainer) -> Path:
    """Where a pre-empted run saves: the ``last.ckpt`` of its first ``ModelCheckpoint(save_last=...)``.

    That is the file ``cmkd fit --ckpt_path last`` resumes. Without such a callback it is
    ``<default_root_dir>/checkpoints/last.ckpt``.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(logger=False, enable_checkpointing=False, default_root_dir="/tmp/run")
        >>> str(preemption_checkpoint_path(trainer))
        '/tmp/run/checkpoints/last.ckpt'
    """
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath is not None:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class Preemption(Callback):
    """Save a resumable checkpoint when the run is pre-empted, and make the process exit with ``128 + signal``.

    SLURM and Kubernetes stop a job with SIGTERM; SLURM's ``--signal=USR1@<s>`` warns with SIGUSR1 first.

    - **SIGTERM**: Lightning's own handler stops the loop at the next step boundary (``SIGTERMException``); this
      callback then saves the checkpoint (:func:`preemption_checkpoint_path`), prints where, and sets the
      exception's exit code to 143 (Lightning's default is 0, which a scheduler records as success).
    - **SIGUSR1**: unless a handler is already installed (Lightning's SLURM auto-requeue: then Lightning saves
      and requeues), the same as SIGTERM, with exit code 138.
    - The checkpoint holds the batches already trained in the current epoch and the RNG states. On resume
      (``--ckpt_path last``) a training sampler with a ``skip(epoch, num_samples)`` method (the data modules of
      this repository) starts the epoch after those batches, so the resumed run reproduces the uninterrupted one;
      with another sampler Lightning replays the epoch's data from its start, and a warning says so.

    The ``cmkd`` command adds this callback to every ``fit``.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[Preemption()], logger=False, enable_progress_bar=False)
        >>> any(isinstance(c, Preemption) for c in trainer.callbacks)
        True
    """

    def __init__(self) -> None:
        self._signal: int | None = None
        self._previous: Any = None
        self._batches_done = 0
        self._epoch = 0
        self._resume: dict[str, Any] | None = None
        self.saved_path: Path | None = None

    # -- signals --------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGUSR1: remember it, then hand over to the SIGTERM handler Lightning installed for the run."""
        self._signal = signum
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signal.SIGTERM, frame)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._signal = None
        self.saved_path = None

    def _install(self) -> None:
        """Handle SIGUSR1 unless something does already (Lightning's SLURM auto-requeue handler, a user's).

        Called when training starts: Lightning installs its own handlers after ``on_fit_start``, and must find
        SIGUSR1 free there to set up its SLURM requeue.
        """
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            try:
                self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
            except ValueError:  # not the main thread: signals cannot be handled here
                self._previous = None

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    # -- where the epoch stands -----------------------------------------------------------------------------

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._resume is None or self._resume.get("epoch") != trainer.current_epoch:
            self._batches_done = 0
        self._epoch = trainer.current_epoch

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()
        resume = self._resume
        if not resume or resume.get("epoch") != trainer.current_epoch:
            return
        done = int(resume.get("batches_done") or 0)
        if not 0 < done < trainer.num_training_batches:  # an epoch's start or end: nothing to skip
            return
        self._batches_done = done
        loader = trainer.train_dataloader
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        if callable(getattr(sampler, "skip", None)) and batch_size:
            sampler.skip(trainer.current_epoch, done * batch_size)
            rank_zero_info(f"Resuming {running_epoch(trainer)} after its first {done} batches.")
        else:
            rank_zero_warn(
                f"The checkpoint was saved after {done} batches of {running_epoch(trainer)}, but the training "
                f"sampler ({type(sampler).__name__}) has no `skip(epoch, num_samples)` method: the rest of the "
                "epoch reads the data from its start (Lightning's default), so the run differs from an "
                "uninterrupted one."
            )

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        resume, self._resume = self._resume, None
        if resume and resume.get("rng") is not None:  # first step after a resume: the RNG where it stopped
            rng = resume["rng"]
            torch.set_rng_state(rng["cpu"])
            if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches_done = batch_idx + 1

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches_done = 0
        self._epoch = trainer.current_epoch + 1

    # -- saving ---------------------------------------------------------------------------------------------

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self._signal or signal.SIGTERM
        name = signal.Signals(signum).name
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        exception.code = 128 + int(signum)
        rank_zero_info(
            f"cmkd: {name} received: saved a resumable checkpoint in {running_epoch(trainer)}, global step "
            f"{trainer.global_step} to {path}. Continue the run with the same command and --ckpt_path last "
            f"(or --ckpt_path {path}). Exit code {exception.code}."
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"epoch": self._epoch, "batches_done": self._batches_done, "rng": rng}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)
