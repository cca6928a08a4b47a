"""The first smoke test a Lightning user runs: ``--trainer.fast_dev_run=true``, with the config's own logger.

Lightning swaps the logger for a stand-in under ``fast_dev_run``; code that reads a real logger's attributes
crashed every config (issue 23). The digits configs run as a user types them (``cmkd fit -c ...``, W&B offline, real
offline data); every shipped config runs the same way on synthetic data through the GPU-check driver.
"""

from __future__ import annotations

import pytest

from cmkd_lightning.cli import main
from tests.reliability._cli import DIGITS
from tests.test_config_smoke import _one_thread, gpu_check  # noqa: F401 - the driver, and its autouse fixture


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(p.name for p in DIGITS.glob("*.yaml")))
def test_digits_config_fast_dev_run_with_its_wandb_logger(tmp_path, monkeypatch, capsys, config):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["fit", "-c", str(DIGITS / config), "--trainer.fast_dev_run=true", "--data.init_args.train_size=64"]
    if config != "teacher.yaml":
        args.append("--model.init_args.teacher_checkpoint=null")
    main(args)  # returns (exit 0) or raises
    out = capsys.readouterr().out
    assert "cmkd fit finished: 1 epoch(s)" in out
    assert not list(tmp_path.rglob("*.ckpt"))  # a smoke test writes no checkpoint and publishes none


@pytest.mark.slow
def test_every_shipped_config_fast_dev_runs_with_its_own_logger():
    # The teachers are untrained here (no checkpoint): a random ResNet-110 in eval mode has stage-2 features up to
    # ~1e6, on which FitNet's first step diverges. The finite guard is off: this test is about the run's set-up.
    failures = []
    for rel in gpu_check.all_configs():
        result = gpu_check.run_config(
            rel, device="cpu", fast_dev_run=True, keep_logger=True, extra_args=("--model.init_args.check_finite=false",)
        )
        if result["status"] != "pass":
            failures.append(f"{rel}: {result['error']}")
    assert not failures, "\n".join(failures)
