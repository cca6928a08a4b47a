"""A disk that fills during a run: a clear last line, no partial file left, no raw traceback (issue 23).

The runs write to a real, small ``tmpfs`` (root only, as on the project's machines and CI). Without the right to
mount one the tests skip, except under CI (``CI=true``), where a skip would hide the probe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability._cli import DIGITS, _env


@pytest.fixture
def tiny_disk(tmp_path):
    """A 100 KiB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here: {result.stderr.decode().strip() or result.returncode}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_disk_that_fills_during_training_ends_with_the_reason_and_no_partial_file(tiny_disk):
    args = ["fit", "-c", str(DIGITS / "ce.yaml"), "--data.init_args.train_size=128", "--data.init_args.val_size=32"]
    args += ["--data.init_args.test_size=32", "--trainer.max_epochs=3"]  # the config's W&B logger, offline
    result = subprocess.run(
        [sys.executable, "-m", "cmkd_lightning.cli", *args],
        cwd=tiny_disk,
        env=_env(tiny_disk, WANDB_MODE="offline"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert not any("Traceback" in line for line in lines), result.stderr[-3000:]
    assert lines[-2] == "cmkd: error; full traceback: add --verbose or set CMKD_VERBOSE=1."
    assert lines[-1].startswith("Could not write the checkpoint '") and "the disk is full (" in lines[-1]
    assert not list(Path(tiny_disk).rglob(".*.partial-*"))  # the failed save left nothing behind
    for checkpoint in Path(tiny_disk).rglob("*.ckpt"):  # what is there is whole
        torch.load(checkpoint, weights_only=True)
