"""The real ``cmkd`` command in subprocesses: fit, --print_config, validate/test from a checkpoint, W&B offline.

Each run is ``python -m cmkd_lightning.cli`` (what the ``cmkd`` console script calls) on the composed-digits
quickstart configs with small splits and a couple of batches, in a temporary working directory (the configs'
relative paths such as ``runs/digits-teacher/teacher.ckpt`` resolve there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests._fakes import write_fake_imagenet

pytestmark = pytest.mark.slow  # every test starts `cmkd` in a subprocess

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits"
SMALL_DATA = [
    "--data.init_args.train_size=256",
    "--data.init_args.val_size=64",
    "--data.init_args.test_size=64",
    "--data.init_args.batch_size=32",
]
SHORT_FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
OFFLINE_NOTICE = "W&B: no API key found"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The current environment without W&B settings, HOME in ``home`` (no ~/.netrc), one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_DIR")}
    # faulthandler: a process stopped with SIGABRT (see _cmkd) prints the Python stack of every thread first
    env.update(HOME=str(home), OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONFAULTHANDLER="1", **extra)
    return env


def _cmkd(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``cmkd <args>`` in ``cwd``; fail with its output unless it exits with 0 within ``timeout`` seconds.

    The command runs in its own process group, so a hung run (DDP ranks waiting on each other) is stopped with the
    rank processes Lightning started for it: first SIGABRT, on which each Python process prints where it waits
    (``PYTHONFAULTHANDLER``), then SIGKILL.
    """
    env = env if env is not None else _env(cwd, WANDB_MODE="offline")
    command = [sys.executable, "-m", "cmkd_lightning.cli", *args]
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGABRT)
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
            pytest.fail(f"cmkd {' '.join(args)} did not finish in {timeout} s:\n{stdout}\n{stderr[-12000:]}")
    if process.returncode != 0:
        pytest.fail(f"cmkd {' '.join(args)} exited with {process.returncode}:\n{stdout}\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """Train the quickstart teacher for two steps with a CSVLogger; returns the working directory."""
    cwd = tmp_path_factory.mktemp("teacher_run")
    _cmkd(
        [
            "fit",
            "-c",
            str(DIGITS / "teacher.yaml"),
            *SMALL_DATA,
            *SHORT_FIT,
            *QUIET,
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir=csv",
        ],
        cwd,
    )
    return cwd


def test_csv_logger_run_writes_config_into_its_version_dir_and_the_checkpoint(teacher_run):
    config = yaml.safe_load((teacher_run / "csv" / "digits-teacher" / "version_0" / "config.yaml").read_text())
    assert config["model"]["class_path"] == "cmkd_lightning.TeacherModule"
    assert config["model"]["init_args"]["model"] == "digits_teacher"
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    checkpoint = torch.load(teacher_run / "runs" / "digits-teacher" / "teacher.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["num_classes"] == 100  # linked from data.num_classes at instantiation
    assert all(key.startswith("student.") for key in checkpoint["state_dict"])


def test_print_config_prints_the_resolved_yaml(tmp_path):
    lr = "--model.init_args.optimizer.init_args.lr=0.02"
    result = _cmkd(["fit", "-c", str(DIGITS / "dkd_cmkd.yaml"), lr, "--print_config"], tmp_path)
    config = yaml.safe_load(result.stdout)
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "cmkd_lightning.DistillationModule"
    assert (model["student"], model["teacher"]) == ("digits_student", "digits_teacher")
    assert model["optimizer"]["init_args"]["lr"] == 0.02
    assert [loss["class_path"] for loss in model["losses"]] == [
        "cmkd_lightning.losses.DKDLoss",
        "cmkd_lightning.losses.CMKDLoss",
    ]
    assert model["losses"][1]["init_args"]["regularization_strength"] is None  # defaults are filled in
    assert config["data"]["class_path"] == "datamodules.ComposedDigitsDataModule"


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_and_test_from_a_checkpoint(teacher_run, stage):
    result = _cmkd(
        [
            stage,
            "-c",
            str(DIGITS / "teacher.yaml"),
            *SMALL_DATA,
            *QUIET,
            "--trainer.logger=false",
            f"--trainer.limit_{'val' if stage == 'validate' else 'test'}_batches=1",
            "--ckpt_path",
            str(teacher_run / "runs" / "digits-teacher" / "teacher.ckpt"),
        ],
        teacher_run,
    )
    prefix = "val" if stage == "validate" else "test"
    assert f"{prefix}/acc_top1" in result.stdout
    assert "Restoring states from the checkpoint path" in result.stdout + result.stderr


def test_wandb_offline_runs_keep_their_own_configs(tmp_path):
    env = _env(tmp_path / "home")  # no WANDB_MODE, no API key, no ~/.netrc
    (tmp_path / "home").mkdir()
    for name in ("ce", "kd"):
        result = _cmkd(
            [
                "fit",
                "-c",
                str(DIGITS / f"{name}.yaml"),
                *SMALL_DATA,
                *SHORT_FIT,
                *QUIET,
                "--model.init_args.teacher_checkpoint=null",
                "--trainer.logger.init_args.save_dir=wandb_runs",
            ],
            tmp_path,
            env,
        )
        assert OFFLINE_NOTICE in result.stdout + result.stderr
    runs = sorted((tmp_path / "wandb_runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    losses = []
    for run in runs:
        config = yaml.safe_load((run / "files" / "config.yaml").read_text())
        assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        losses.append([loss["class_path"] for loss in config["model"]["init_args"]["losses"] or []])
    assert sorted(losses) == [[], ["cmkd_lightning.losses.KDLoss"]]


def test_student_config_reads_the_teacher_checkpoint_of_teacher_yaml(teacher_run):
    # The quickstart chain as documented: teacher.yaml writes runs/digits-teacher/teacher.ckpt (a CE-only module, so
    # its network is stored under `student.`), and the student configs read it as their teacher.
    result = _cmkd(
        [
            "fit",
            "-c",
            str(DIGITS / "cmkd.yaml"),
            *SMALL_DATA,
            *QUIET,
            "--trainer.logger=false",
            "--trainer.fast_dev_run=1",
        ],
        teacher_run,
    )
    assert "Teacher validation Top-1" in result.stdout + result.stderr


def test_imagenet_config_runs_its_ddp_strategy_on_two_cpu_processes(tmp_path):
    # imagenet/_base.yaml says `strategy: ddp`: Lightning relaunches this very command once per extra device. Two
    # CPU processes (gloo) run DKD + CMKD with the all-reduced entropy threshold; no logger, so the resolved config
    # goes to the default root directory (all ranks must take part in resolving it, or the ranks deadlock).
    data_dir = write_fake_imagenet(tmp_path / "imagenet", num_classes=3, per_class=4, size=72)
    configs = Path(__file__).resolve().parents[2] / "examples" / "configs" / "imagenet"
    result = _cmkd(
        [
            "fit",
            "-c",
            str(configs / "_base.yaml"),
            "-c",
            str(configs / "dkd_cmkd" / "res34_res18.yaml"),
            "--model.init_args.teacher_checkpoint=null",
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.logger=false",
            f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.num_classes=3",
            "--data.init_args.image_size=64",
            "--data.init_args.resize_size=72",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            *SHORT_FIT,
            *QUIET,
        ],
        tmp_path,
        timeout=400,  # two DDP processes on a 2-core machine: minutes when the machine is shared
    )
    output = result.stdout + result.stderr
    assert "Starting with 2 processes" in output
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in output
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["trainer"]["strategy"] == "ddp"
    assert not (tmp_path / "config-1.yaml").exists()  # written once, by rank 0


def test_cli_checkpoint_reloads_from_python_without_arguments(tmp_path):
    """Under the CLI the hparams hold class_path configs, so load_from_checkpoint rebuilds everything."""
    ckpt_dir = tmp_path / "ckpt"
    _cmkd(
        [
            "fit",
            "-c",
            str(DIGITS / "dkd_cmkd.yaml"),
            *SMALL_DATA,
            *SHORT_FIT,
            *QUIET,
            "--trainer.logger=false",
            "--model.init_args.teacher_checkpoint=null",
            "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={ckpt_dir}",
            "--trainer.callbacks.filename=last",
        ],
        tmp_path,
    )
    from cmkd_lightning import DistillationModule
    from cmkd_lightning.losses import CMKDLoss, DKDLoss

    module = DistillationModule.load_from_checkpoint(ckpt_dir / "last.ckpt")  # safe (weights_only) load
    assert [type(loss) for loss in module.losses] == [DKDLoss, CMKDLoss]
    assert module.num_classes == 100 and module.teacher is not None
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["state_dict"]
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, state[f"student.{key}"]), key
