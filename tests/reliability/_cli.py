"""Shared helpers of the reliability probes: the real ``cmkd`` command, in this process or as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from cmkd_lightning.cli import main

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "configs" / "digits"
SMALL = [
    "--data.init_args.train_size=128",
    "--data.init_args.val_size=32",
    "--data.init_args.test_size=32",
    "--data.init_args.batch_size=32",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
CSV = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir=csv"]


class PauseAt(Callback):
    """Test helper: at (epoch, batch) write ``marker`` and sleep, so the test can SIGKILL the run there."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 1) -> None:
        self.marker, self.epoch, self.batch = marker, epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(600)


def _env(home: Path, **extra: str) -> dict[str, str]:
    drop = ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_DIR", "WANDB_BASE_URL", "CMKD_VERBOSE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    env.update(extra)
    return env


def _start(args: list[str], cwd: Path, env: dict[str, str], code: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "cmkd_lightning.cli", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)  # with PYTHONFAULTHANDLER each process prints where it waits
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"run did not finish in {timeout} s:\n{output[-12000:]}")
    return process.returncode, output


def _kill_when(process: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the run never reached the kill point:\n{output[-4000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _fit_checkpointing_into(dirpath: Path) -> list[str]:
    """``cmkd fit`` arguments: one epoch of the digits CE config, no logger, a ModelCheckpoint writing to ``dirpath``."""
    return [
        "fit",
        "-c",
        str(DIGITS / "ce.yaml"),
        *SMALL,
        "--trainer.logger=false",
        "--trainer.max_epochs=1",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={dirpath}",
    ]


def _cli_error(capsys, args: list[str]) -> tuple[int, list[str]]:
    """Run ``cmkd`` in this process; return its exit code and the non-empty stderr lines."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    return info.value.code, [line for line in err.splitlines() if line.strip()]




class WaitForSignal(Callback):
    """Test helper: after batch ``batch`` of ``epoch`` write ``marker``, then wait (at most 120 s) for a signal.

    The step then ends normally, so a pre-emption signal stops the run at this step boundary.
    """

    def __init__(self, marker: str, epoch: int = 1, batch: int = 1) -> None:
        self.marker, self.epoch, self.batch = marker, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(str(trainer.global_step))
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)
