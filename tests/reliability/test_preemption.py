"""Pre-emption loses no work: SIGTERM / SIGUSR1 mid-epoch save, exit non-zero, and resume to the same weights.

A scheduler (SLURM, Kubernetes) stops a job with SIGTERM; Lightning alone exits 0 with no checkpoint, which the
scheduler records as success. Each probe runs the real ``cmkd`` command in a subprocess and signals it mid-epoch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.reliability._cli import CSV, DIGITS, SMALL, _env, _finish, _start

ARGS = [
    "fit",
    "-c",
    str(DIGITS / "kd.yaml"),
    *SMALL,
    *CSV,
    "--model.init_args.teacher_checkpoint=null",
    "--trainer.max_epochs=3",
]
# waits for the signal after the second batch of the second epoch (the marker tells the test it is there)
PAUSE = ["--trainer.callbacks+=tests.reliability._cli.WaitForSignal", "--trainer.callbacks.epoch=1"]


def _signal_mid_epoch(tmp_path: Path, signum: int) -> tuple[int, str]:
    marker = tmp_path / "paused"
    process = _start([*ARGS, *PAUSE, f"--trainer.callbacks.marker={marker}"], tmp_path, _env(tmp_path))
    deadline = 240
    start = time.monotonic()
    while not marker.exists():
        if process.poll() is not None or time.monotonic() - start > deadline:
            code, output = _finish(process, timeout=30)
            pytest.fail(f"the run never reached the pause point (exit {code}):\n{output[-3000:]}")
        time.sleep(0.2)
    process.send_signal(signum)
    return _finish(process, timeout=120)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_to_the_uninterrupted_weights(tmp_path):
    run = tmp_path / "interrupted"
    run.mkdir()
    code, output = _signal_mid_epoch(run, signal.SIGTERM)
    last = run / "csv" / "digits-kd" / "version_0" / "checkpoints" / "last.ckpt"
    assert code == 143, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert (
        f"cmkd: SIGTERM received: saved a resumable checkpoint in epoch 2 of 3, global step 6 to {last.relative_to(run)}"
        in (lines[-1])
    ), lines[-3:]
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)  # 4 batches an epoch: 2 of epoch 1 done

    resumed = subprocess.run(
        [sys.executable, "-m", "cmkd_lightning.cli", *ARGS, "--ckpt_path=last"],
        cwd=run,
        env=_env(run),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Resuming epoch 2 of 3 after its first 2 batches." in resumed.stdout + resumed.stderr

    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    plain = subprocess.run(
        [sys.executable, "-m", "cmkd_lightning.cli", *ARGS],
        cwd=reference,
        env=_env(reference),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-2000:]
    a = _weights(last)
    b = _weights(reference / "csv" / "digits-kd" / "version_0" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_sigusr1_mid_epoch_saves_and_exits_138(tmp_path):
    code, output = _signal_mid_epoch(tmp_path, signal.SIGUSR1)
    assert code == 138, output[-3000:]
    assert "cmkd: SIGUSR1 received: saved a resumable checkpoint" in output
    assert (tmp_path / "csv" / "digits-kd" / "version_0" / "checkpoints" / "last.ckpt").is_file()
