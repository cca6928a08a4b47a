"""The run you asked for is the run you get: ``--ckpt_path`` resumes only the same model and method (issue 23).

LightningCLI alone merges a checkpoint's hyperparameters over the config, so ``cmkd fit -c kd.yaml --ckpt_path
<a CMKD run>`` trained CMKD and exited 0. Each probe here runs the real ``cmkd`` command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_lightning.cli import main
from tests.reliability._cli import CSV, DIGITS, SMALL, _cli_error

NO_TEACHER = "--model.init_args.teacher_checkpoint=null"


def _fit(config: str, *extra: str) -> list[str]:
    return ["fit", "-c", str(DIGITS / config), *SMALL, "--trainer.max_epochs=1", *extra]


def _last(folder: Path) -> Path:
    found = sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert found, f"no last.ckpt under {folder}"
    return found[-1]


@pytest.fixture
def cmkd_checkpoint(tmp_path, monkeypatch) -> Path:
    """A one-epoch CMKD student run (CSV logger, no teacher weights), as `cmkd fit -c cmkd.yaml` writes it."""
    monkeypatch.chdir(tmp_path)
    main(_fit("cmkd.yaml", *CSV, NO_TEACHER))
    return _last(tmp_path / "csv")


def test_explicit_ckpt_path_of_another_method_is_refused_naming_the_differences(cmkd_checkpoint, capsys):
    before = cmkd_checkpoint.read_bytes()
    code, lines = _cli_error(capsys, [*_fit("kd.yaml", *CSV, NO_TEACHER), f"--ckpt_path={cmkd_checkpoint}"])
    assert code == 1
    assert len(lines) <= 3 and not any("Traceback" in line for line in lines)
    assert lines[-1].startswith(f"Expected `--ckpt_path` {cmkd_checkpoint} to continue this run's model and method")
    assert "losses (checkpoint: [CMKDLoss(" in lines[-1] and "this run: [KDLoss(" in lines[-1]
    assert f"--model.init_args.student_checkpoint={cmkd_checkpoint}" in lines[-1]
    assert cmkd_checkpoint.read_bytes() == before  # nothing was trained into the other run


def test_explicit_ckpt_path_of_another_method_is_refused_without_a_logger(cmkd_checkpoint, capsys):
    code, lines = _cli_error(
        capsys, [*_fit("kd.yaml", "--trainer.logger=false", NO_TEACHER), f"--ckpt_path={cmkd_checkpoint}"]
    )
    assert code == 1
    assert "to continue this run's model and method" in lines[-1]


def test_a_teacher_checkpoint_is_not_resumed_as_a_student_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(_fit("teacher.yaml", "--trainer.logger=false"))
    teacher = tmp_path / "checkpoints" / "last.ckpt"
    code, lines = _cli_error(capsys, [*_fit("cmkd.yaml", "--trainer.logger=false", NO_TEACHER), f"--ckpt_path={teacher}"])
    assert code == 1
    assert "module (checkpoint: cmkd_lightning.module.teacher.TeacherModule; this run: cmkd_lightning.module" in lines[-1]


def test_the_same_method_resumes_and_may_change_the_optimiser(cmkd_checkpoint):
    steps = torch.load(cmkd_checkpoint, weights_only=True)["global_step"]
    main(
        [
            *_fit("cmkd.yaml", *CSV, NO_TEACHER),
            "--trainer.max_epochs=2",
            "--model.init_args.optimizer.init_args.lr=0.01",  # tuning, not the method: allowed
            f"--ckpt_path={cmkd_checkpoint}",
        ]
    )
    resumed = torch.load(cmkd_checkpoint, weights_only=True)
    assert resumed["global_step"] == 2 * steps  # continued in the same run folder (same CSV version)


def test_student_checkpoint_starts_a_new_run_from_another_methods_weights(cmkd_checkpoint, tmp_path):
    main(_fit("kd.yaml", *CSV, NO_TEACHER, f"--model.init_args.student_checkpoint={cmkd_checkpoint}"))
    runs = sorted((tmp_path / "csv").glob("*/version_*/checkpoints/last.ckpt"))
    kd = [p for p in runs if "digits-kd" in str(p)]
    assert len(kd) == 1 and torch.load(kd[0], weights_only=True)["global_step"] > 0


def test_ckpt_path_last_after_changing_the_loss_does_not_continue_the_wandb_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(_fit("cmkd.yaml", NO_TEACHER))  # the config's own W&B logger, offline
    changed = "--model.init_args.losses.init_args.temperature=1.0"
    code, lines = _cli_error(capsys, [*_fit("cmkd.yaml", NO_TEACHER, changed), "--ckpt_path=last"])
    assert code == 1
    assert lines[-1].startswith("Expected a checkpoint of this model and method to resume (`--ckpt_path last`)")
    assert "temperature" in lines[-1] or "losses" in lines[-1]
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 1  # no second W&B run was started


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        (b"", "is empty (0 bytes): it was probably cut off while being written"),
        ("truncated", "cannot be read: it is truncated ("),
        ("pickle", "Refusing to load `--ckpt_path`"),
        ("folder", "is a folder"),
    ],
    ids=["missing", "empty", "truncated", "crafted_pickle", "folder"],
)
def test_a_bad_ckpt_path_is_named_in_a_few_lines_before_anything_is_built(
    tmp_path, monkeypatch, capsys, content, expected
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.ckpt"
    marker = tmp_path / "executed"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.ones(200, 200)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif content == "pickle":
        torch.save({"state_dict": {}, "payload": _WritesAFile(str(marker))}, path)
    elif content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, lines = _cli_error(capsys, [*_fit("ce.yaml", "--trainer.logger=false"), f"--ckpt_path={path}"])
    assert code == 1
    assert len(lines) <= 3 and not any("Traceback" in line for line in lines), lines
    assert expected in lines[-1] and str(path) in lines[-1]
    assert not marker.exists()
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


class _WritesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_ckpt_path_last_names_a_truncated_last_checkpoint_as_unreadable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = _fit("ce.yaml", "--trainer.logger=false")
    main(base)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    code, lines = _cli_error(capsys, [*base, "--ckpt_path=last"])
    assert code == 1
    assert lines[-1].startswith("Expected a checkpoint to resume (`--ckpt_path last`), but the newest in")
    assert "checkpoints/last.ckpt, cannot be read: it is truncated (" in lines[-1]
    assert "other runs" not in lines[-1]
