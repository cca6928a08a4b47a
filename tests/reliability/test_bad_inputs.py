"""Every bad input ends in at most three lines naming the file or argument, what was expected and the fix (issue 23).

Each probe runs the real ``cmkd`` command and checks the exit code, that no traceback is printed, and the last line
a person reads. Checks that can be made before training are made before training: nothing is written.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmkd_lightning.cli import main
from tests.reliability._cli import CSV, DIGITS, SMALL, _cli_error, _env

TINY = [
    "fit",
    "--model=cmkd_lightning.DistillationModule",
    "--model.init_args.student=resnet8",
    "--trainer.logger=false",
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _readable(lines: list[str]) -> None:
    assert 1 <= len(lines) <= 3, lines
    assert not any("Traceback" in line or line.startswith("  File ") for line in lines), lines
    assert "--verbose" in lines[0]


def test_a_config_file_that_is_not_utf8_names_the_file_line_and_byte(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "latin1.yaml"
    config.write_bytes((DIGITS / "ce.yaml").read_bytes() + "# Température\n".encode("latin-1"))
    code, lines = _cli_error(capsys, ["fit", "-c", str(config)])
    assert code == 1
    _readable(lines)
    lines_in_file = (DIGITS / "ce.yaml").read_text().count("\n") + 1
    assert lines[-1] == (
        f"Expected the config file {config} to be UTF-8 text, but byte 0xe9 at line {lines_in_file}, column 7 is not "
        "UTF-8 (probably saved as Latin-1 or Windows-1252). Re-save it as UTF-8."
    )


def test_a_config_file_that_is_not_yaml_names_the_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: [1, 2\nmodel: {}\n")
    code, lines = _cli_error(capsys, ["fit", "-c", str(config)])
    assert code == 1
    _readable(lines)
    assert lines[-1].startswith(f"Expected the config file {config} to be YAML, but it does not parse at line 3")


def test_an_accelerator_this_machine_lacks_fails_before_building(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    code, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "ce.yaml"), "--trainer.accelerator=gpu"])
    assert code == 1
    _readable(lines)
    assert lines[-1].startswith("Expected a GPU for `--trainer.accelerator=gpu`, but torch finds no CUDA device")
    assert "Use --trainer.accelerator=cpu" in lines[-1]


def test_a_student_before_its_teacher_says_which_config_trains_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "kd.yaml")])
    assert code == 1
    _readable(lines)
    missing = tmp_path / "runs" / "digits-teacher" / "teacher.ckpt"
    assert f"at {missing} (relative paths are read from the working directory {tmp_path})" in lines[-1]
    assert lines[-1].endswith(f"Train the teacher first, from this folder: cmkd fit -c {DIGITS / 'teacher.yaml'}")


def test_a_teacher_run_whose_published_link_is_a_regular_file_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "runs" / "digits-teacher" / "teacher.ckpt"
    link.parent.mkdir(parents=True)
    link.write_bytes(b"someone's own checkpoint")
    code, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "teacher.yaml"), *SMALL, *CSV])
    assert code == 1
    _readable(lines)
    assert "it is a regular file; nothing was trained" in lines[-1]
    assert not list((tmp_path / "csv").rglob("*.ckpt"))
    assert link.read_bytes() == b"someone's own checkpoint"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("EmptyTrainSet", "Expected training batches from EmptyTrainSet, but its train_dataloader() yields none"),
        (
            "LabelsOutOfRange",
            "Expected every label in [0, 9] (the model's num_classes = 10), but the batch holds label 13",
        ),
        ("NaNImages", "Non-finite input at "),
    ],
)
def test_bad_data_is_named_not_blamed_on_the_learning_rate(tmp_path, monkeypatch, capsys, data, expected):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(capsys, [*TINY, f"--data=tests.reliability._data.{data}"])
    assert code == 1
    _readable(lines)
    assert expected in lines[-1]
    assert "learning rate" not in lines[-1] or "not the cause" in lines[-1]


def test_an_overflowing_loss_setting_is_not_blamed_on_the_learning_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(
        capsys,
        [
            *TINY,
            "--data=tests.reliability._data.TinyImages",
            "--model.init_args.teacher=resnet8",
            "--model.init_args.losses=[{class_path: cmkd_lightning.losses.KDLoss, init_args: {temperature: 1e30}}]",
        ],
    )
    assert code == 1
    _readable(lines)
    assert "before any update, with finite inputs and logits" in lines[-1]
    assert "The loss's settings overflow" in lines[-1]


def _wandb_run(tmp_path: Path, **env: str) -> tuple[int, str, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cmkd_lightning.cli", "fit", "-c", str(DIGITS / "ce.yaml"), *SMALL],
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stderr, time.monotonic() - start


@pytest.mark.slow
def test_wandb_online_without_a_key_fails_in_seconds_with_the_fix(tmp_path):
    code, stderr, seconds = _wandb_run(tmp_path, WANDB_MODE="online")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1, stderr[-2000:]
    assert re.match(r"Expected W&B credentials for \S+ because WANDB_MODE=online, but wandb finds none", lines[-1])
    assert "unset WANDB_MODE to log offline" in lines[-1]
    assert not list(tmp_path.rglob("*.ckpt"))
    assert seconds < 60  # the process start and imports; the check itself makes no network call


@pytest.mark.slow
def test_wandb_online_with_a_key_and_no_reachable_server_fails_within_the_probe_timeout(tmp_path):
    # a local port nothing listens on: the connection is refused at once, as an unroutable host times out in 5 s
    code, stderr, seconds = _wandb_run(
        tmp_path,
        WANDB_MODE="online",
        WANDB_API_KEY="x" * 40,
        WANDB_BASE_URL="http://127.0.0.1:9",
        CMKD_WANDB_TIMEOUT="2",
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1, stderr[-2000:]
    assert lines[-1].startswith(
        "Expected the W&B server http://127.0.0.1:9 to be reachable because WANDB_MODE=online, but it did not answer"
    )
    assert seconds < 60


def test_verbose_keeps_the_full_traceback_for_library_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from cmkd_lightning.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="Train the teacher first"):
        main(["fit", "-c", str(DIGITS / "kd.yaml"), "--verbose"])
