"""What a new user meets first: `cmkd fit --help`, `cmkd list`, one way to set the optimiser, the thread setting,
and a run that ends with its summary and without Lightning's noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmkd_lightning.cli import main
from cmkd_lightning.utilities.runtime import cpu_threads, quiet_lightning, set_cpu_threads

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "configs" / "digits"


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_fit_help_points_to_the_building_blocks_and_says_nothing_about_wandb(capsys, no_wandb_key):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    for needle in ("cmkd list models", "cmkd list losses", "cmkd list data", "--model.init_args.optimizer"):
        assert needle in text
    assert "--cpu_threads" in text
    assert "W&B" not in text and "no API key" not in text
    assert "WANDB_MODE" not in os.environ  # the offline switch happens only when a run starts


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("models", ["digits_student", "resnet8x4", "resnet32x4"]),
        ("losses", ["cmkd_lightning.losses.CMKDLoss", "cmkd_lightning.losses.DKDLoss"]),
        ("data", ["datamodules.ComposedDigitsDataModule", "datamodules.CIFAR100DataModule"]),
    ],
)
def test_cmkd_list(kind, expected, capsys):
    main(["list", kind])
    out = capsys.readouterr().out
    for name in expected:
        assert name in out
    if kind == "losses":
        assert "DistillationLoss" not in out  # the base class is not a loss to configure


def test_cmkd_list_everything_and_a_bad_kind(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "digits_student" in out and "CMKDLoss" in out and "ComposedDigitsDataModule" in out
    with pytest.raises(SystemExit, match=r"Expected `cmkd list models\|losses\|data`, but got `cmkd list optimizers`"):
        main(["list", "optimizers"])


@pytest.mark.parametrize("arg", ["--optimizer=Adam", "--optimizer.init_args.lr=0.1", "--lr_scheduler=StepLR"])
def test_cli_optimizer_arguments_are_refused_with_the_module_arguments_named(arg):
    with pytest.raises(SystemExit, match=r"is not a cmkd option.*--model\.init_args\.optimizer=torch\.optim\.Adam"):
        main(["fit", "-c", str(DIGITS / "cmkd.yaml"), arg])


def test_config_file_optimizer_is_refused(tmp_path, no_wandb_key):
    extra = tmp_path / "opt.yaml"
    extra.write_text("optimizer:\n  class_path: torch.optim.Adam\n  init_args: {lr: 0.1}\n")
    with pytest.raises(
        SystemExit, match=r"`--optimizer` is not a cmkd option.*--model\.init_args\.optimizer\.init_args\.lr"
    ):
        main(["fit", "-c", str(DIGITS / "cmkd.yaml"), "-c", str(extra)])


def test_cpu_threads_setting(monkeypatch):
    monkeypatch.delenv("CMKD_CPU_THREADS", raising=False)
    assert cpu_threads() == 1
    assert cpu_threads(3) == 3 and cpu_threads("0") == 0
    monkeypatch.setenv("CMKD_CPU_THREADS", "2")
    assert cpu_threads() == 2 and cpu_threads(1) == 1  # an explicit value beats the environment
    monkeypatch.setenv("CMKD_CPU_THREADS", "many")
    with pytest.raises(ValueError, match=r"Expected `\$CMKD_CPU_THREADS` to be an integer >= 0.*but got 'many'"):
        cpu_threads()
    with pytest.raises(ValueError, match=r"Expected `cpu_threads` to be an integer >= 0.*but got -2"):
        cpu_threads(-2)
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1) == 1 == torch.get_num_threads()
        assert set_cpu_threads(0) == 1  # 0 leaves the current setting alone
    finally:
        torch.set_num_threads(before)


def test_quiet_lightning_drops_only_the_known_noise(caplog):
    import logging
    import warnings

    from lightning.pytorch.utilities import rank_zero_info

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=2)
            warnings.warn(
                "It is recommended to use `self.log('val/loss', ..., sync_dist=True)` when ...",
                UserWarning,
                stacklevel=2,
            )
            warnings.warn(
                "It is recommended to use `self.log('my_metric', ..., sync_dist=True)` when ...",
                UserWarning,
                stacklevel=2,
            )
            warnings.warn("something else", UserWarning, stacklevel=2)
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, after the block", DeprecationWarning, stacklevel=2
        )
    messages = [str(w.message) for w in caught]
    assert not any("'val/loss'" in m for m in messages)
    assert any("'my_metric'" in m for m in messages)  # a user's own metric still gets Lightning's advice
    assert "something else" in messages and any("after the block" in m for m in messages)
    assert sum("LeafSpec" in m for m in messages) == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        with quiet_lightning():
            rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try litlogger")
            rank_zero_info("kept")
        rank_zero_info("💡 Tip: For seamless cloud logging, outside")
    logged = [r.getMessage() for r in caplog.records]
    assert "kept" in logged and not any(m.endswith("try litlogger") for m in logged)
    # Outside the block too: the tips are dropped from the moment cmkd_lightning is imported (test_quiet.py).
    assert not any(m.endswith("outside") for m in logged)


@pytest.mark.slow
def test_cmkd_fit_ends_with_its_summary_and_no_noise(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "CMKD_CPU_THREADS": "1", "NETRC": str(tmp_path / "no-netrc")}
    # as a person runs it: no key, no mode, and wandb not silenced (tests/conftest.py sets WANDB_SILENT)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT", "WANDB_QUIET"):
        env.pop(key, None)
    teacher = [
        sys.executable,
        "-m",
        "cmkd_lightning.cli",
        "fit",
        "-c",
        "examples/configs/digits/teacher.yaml",
        "--trainer.max_epochs=2",
        "--data.init_args.train_size=256",
        "--data.init_args.val_size=128",
        "--data.init_args.test_size=128",
    ]
    proc = subprocess.run(teacher, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out, err = proc.stdout, proc.stderr
    # Not a terminal: no progress bar, one line per epoch, then the summary with every path.
    assert "epoch 1/2  val Top-1" in out and "epoch 2/2  val Top-1" in out
    assert "cmkd fit finished: 2 epoch(s)" in out and "(cpu, 1 torch thread(s))" in out
    assert "val Top-1 %" in out and "losses, last epoch" in out
    # Each run checkpoints into its own folder; the config publishes the stable teacher path as a link to it.
    latest = next(line for line in out.splitlines() if line.startswith("checkpoint (latest): "))
    last = next(line for line in out.splitlines() if line.startswith("last checkpoint:"))
    assert latest.split(": ", 1)[1].strip().startswith("runs/cmkd-digits/")
    last_path = tmp_path / last.split(":", 1)[1].strip()
    assert last_path.is_file() and last_path.name == "last.ckpt"
    assert (tmp_path / "runs" / "digits-teacher" / "teacher.ckpt").resolve() == last_path.resolve()
    assert "config:" in out and "W&B run (offline):" in out and "upload it with:      wandb sync runs/wandb/" in out
    assert "W&B: no API key found" in err  # said once, when the run starts
    assert "litlogger" not in out + err and "LeafSpec" not in out + err
    assert "\r" not in out  # no progress-bar fragments
    # Not a terminal: no colour codes (wandb's closing lines came from its service process, in colour), no W&B
    # warnings (the `anonymous` Lightning passes, the save_dir that did not exist yet, the WANDB_MODE set after
    # wandb read the environment), no version banner; wandb's own lines say where the offline run is.
    assert "\x1b[" not in out + err
    assert "wandb: WARNING" not in err and "Tracking run with wandb version" not in err
    assert "wandb: Run data is saved locally in runs/wandb/offline-run-" in err
    # cmkd's model summary: the network and its counts, not Lightning's table of metric containers and FLOPs.
    assert "Model: TeacherModule\n  model  DigitsCNN" in out and "trainable" in out
    assert "FLOPs" not in out and "epoch_metrics" not in out
    # Evaluating that checkpoint: its own summary, without Lightning's warning about the other run's folder.
    test = [*teacher[:3], "test", *teacher[4:6], f"--ckpt_path={last_path}", *teacher[7:]]
    proc = subprocess.run(test, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "cmkd test finished" in proc.stdout and "test Top-1 %" in proc.stdout
    assert "dirpath has changed" not in proc.stderr and "wandb: WARNING" not in proc.stderr
