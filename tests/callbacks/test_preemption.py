"""Preemption in a plain Trainer: which SIGUSR1 handler is in place, and what a save at SIGTERM holds.

The end-to-end signal runs (a real SIGTERM / SIGUSR1 to a ``cmkd`` process, exit codes, bit-exact resume) are in
``tests/reliability/test_preemption.py``.
"""

from __future__ import annotations

import signal

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cmkd_lightning.callbacks import Preemption
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module


class _Record(Callback):
    """Records the SIGUSR1 handler seen during training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.handler = signal.getsignal(signal.SIGUSR1)


def test_sigusr1_is_handled_during_training_and_restored_after(tmp_path):
    preemption, record = Preemption(), _Record()
    cpu_trainer(tmp_path, [preemption, record], logger=False).fit(digits_module(teacher=False), digits_data())
    assert record.handler == preemption._on_signal
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_sigusr1_handler_already_installed_is_left_alone(tmp_path):
    def users_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGUSR1, users_handler)
    try:
        record = _Record()
        cpu_trainer(tmp_path, [Preemption(), record], logger=False).fit(digits_module(teacher=False), digits_data())
        assert record.handler is users_handler  # e.g. Lightning's SLURM auto-requeue handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


class _StopAfter(Callback):
    """Raises Lightning's SIGTERMException after the second training batch (what its SIGTERM handler leads to)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            raise SIGTERMException()


def test_sigterm_saves_the_batches_done_and_sets_exit_code_143(tmp_path):
    with pytest.raises(SIGTERMException) as info:
        cpu_trainer(tmp_path, [Preemption(), _StopAfter()], logger=False, limit_train_batches=4).fit(
            digits_module(teacher=False), digits_data()
        )
    assert info.value.code == 143
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = saved["callbacks"]["Preemption"]
    assert (state["epoch"], state["batches_done"]) == (0, 2)
    assert saved["global_step"] == 2
