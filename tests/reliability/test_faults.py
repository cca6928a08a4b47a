"""Nothing lost, nothing hidden: real faults against the real ``cmkd`` command (issue 13).

Checkpoints that cannot be written or hold non-finite weights stop the run; runs resume after SIGKILL (mid-epoch
and mid-write) and continue their logger run; concurrent runs keep their own files; build-time errors are a few
readable lines; W&B with a key but no reachable server falls back to offline quickly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cmkd_lightning.cli import main
from tests.reliability._cli import (
    CSV,
    DIGITS,
    REPO,
    SMALL,
    _cli_error,
    _env,
    _finish,
    _fit_checkpointing_into,
    _kill_when,
    _start,
)

# --- 1. A checkpoint that was not written is an error ---------------------------------------------------------


def test_a_checkpoint_folder_that_cannot_be_created_stops_the_run_before_training(tmp_path, monkeypatch, capsys):
    # Tests run as root, where permission bits do not block writes: a file where the folder must be fails for real.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_a_folder").write_text("x")
    dirpath = tmp_path / "not_a_folder" / "checkpoints"
    code, lines = _cli_error(
        capsys,
        [
            *_fit_checkpointing_into(dirpath),
        ],
    )
    assert code == 1
    assert lines[-1].startswith(f"Expected the checkpoint folder '{dirpath}' (NotADirectoryError: Not a directory)")
    assert "nothing was trained" in lines[-1]


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only folder, also for root: the immutable attribute (``chattr +i``) blocks every write."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_a_read_only_checkpoint_folder_stops_the_run_before_training(read_only_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError):
        (read_only_folder / "probe").write_text("x")  # the folder really refuses writes, root or not
    code, lines = _cli_error(
        capsys,
        [
            *_fit_checkpointing_into(read_only_folder),
        ],
    )
    assert code == 1
    assert lines[-1].startswith(f"Expected the checkpoint folder '{read_only_folder}'"), lines[-3:]
    assert "nothing was trained" in lines[-1]
    assert list(read_only_folder.iterdir()) == []


def test_a_save_that_does_not_produce_its_file_is_an_error(tmp_path, monkeypatch, capsys):
    # The folder is writable (the probe passes) but last.ckpt is a folder: the rename of the finished file fails.
    # Lightning's own writer would drop such an error when it is a PermissionError; ours names the file.
    monkeypatch.chdir(tmp_path)
    dirpath = tmp_path / "ckpt"
    (dirpath / "last.ckpt").mkdir(parents=True)
    code, lines = _cli_error(
        capsys,
        [
            *_fit_checkpointing_into(dirpath),
            "--trainer.callbacks.save_last=true",
            "--trainer.callbacks.enable_version_counter=false",
        ],
    )
    assert code == 1
    assert lines[-1].startswith(f"Could not write the checkpoint '{dirpath / 'last.ckpt'}': Is a directory.")
    assert not list(dirpath.glob(".*partial*"))  # no half-written file left behind


def test_a_diverged_run_never_saves_non_finite_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "fit",
                "-c",
                str(DIGITS / "ce.yaml"),
                *SMALL,
                *CSV,
                "--trainer.max_epochs=2",
                "--model.init_args.optimizer.init_args.lr=1e4",
            ]
        )
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "non-finite" in err or "NaN" in err or "inf" in err, err[-2000:]
    for path in tmp_path.rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, f"{path} holds non-finite {bad}"


# --- 2. Resumable by default ----------------------------------------------------------------------------------


def test_every_shipped_config_saves_last_checkpoints():
    configs = REPO / "examples" / "configs"
    standalone = [*DIGITS.glob("*.yaml"), *configs.glob("*/_base.yaml")]
    with_callbacks = [
        p for p in configs.rglob("*.yaml") if "callbacks" in (yaml.safe_load(p.read_text()) or {}).get("trainer", {})
    ]
    for path in {*standalone, *with_callbacks}:
        callbacks = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
        assert any(
            c["class_path"].endswith("ModelCheckpoint") and c["init_args"].get("save_last") for c in callbacks
        ), path
        text = path.read_text()
        assert "enable_version_counter: false" not in text, path


def test_ckpt_path_last_with_nothing_to_resume_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(
        capsys, ["fit", "-c", str(DIGITS / "ce.yaml"), *SMALL, *CSV, "--trainer.max_epochs=1", "--ckpt_path=last"]
    )
    assert code == 1
    assert lines[-1].startswith("Expected a checkpoint to resume (`--ckpt_path last`), but found no last*.ckpt in")
    assert "csv/digits-ce/*/checkpoints" in lines[-1]


def test_ckpt_path_last_skips_checkpoints_of_other_configs_in_a_shared_folder(tmp_path, monkeypatch, capsys):
    """Without a logger every config writes to ``./checkpoints``: ``last`` is the newest of *this* config."""
    monkeypatch.chdir(tmp_path)
    base = ["fit", "-c", str(DIGITS / "ce.yaml"), *SMALL, "--trainer.logger=false", "--trainer.max_epochs=1"]
    other = [*base, "--model.init_args.student=digits_teacher"]
    main(base)  # config A: checkpoints/last.ckpt
    code, lines = _cli_error(capsys, [*other, "--ckpt_path=last"])
    assert code == 1
    assert lines[-1].startswith("Expected a checkpoint of this model and method to resume (`--ckpt_path last`)")
    assert "checkpoints/last.ckpt, differs in student (checkpoint: digits_student; this run: digits_teacher))" in lines[-1]
    main(other)  # config B: checkpoints/last-v1.ckpt, now the newest file
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("last*.ckpt")) == ["last-v1.ckpt", "last.ckpt"]
    steps = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    main([*base[:-1], "--trainer.max_epochs=2", "--ckpt_path=last"])  # A again: its own, older last.ckpt
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 2 * steps)
    # a fresh run would have written last-v2.ckpt beside the others; the resumed one continued in last.ckpt
    assert not (tmp_path / "checkpoints" / "last-v2.ckpt").exists()
    assert torch.load(tmp_path / "checkpoints" / "last-v1.ckpt", weights_only=False)["global_step"] == steps


@pytest.mark.slow
def test_sigkill_mid_epoch_then_ckpt_path_last_continues_the_same_wandb_run(tmp_path):
    env = _env(tmp_path, WANDB_MODE="offline")
    marker = tmp_path / "paused"
    args = ["fit", "-c", str(DIGITS / "ce.yaml"), *SMALL, "--trainer.max_epochs=3"]
    first = _start(
        [*args, "--trainer.callbacks+=tests.reliability._cli.PauseAt", f"--trainer.callbacks.marker={marker}"],
        tmp_path,
        env,
    )
    _kill_when(first, marker)  # killed in epoch 1, after epoch 0's last.ckpt
    assert marker.read_text() == "5"  # global step when killed (4 batches per epoch)
    [killed_run] = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    run_id = killed_run.name.rsplit("-", 1)[1]
    code, output = _finish(_start([*args, "--ckpt_path=last"], tmp_path, env))
    assert code == 0, output[-4000:]
    assert f"runs/cmkd-digits/{run_id}/checkpoints/last.ckpt" in output
    resumed = [p for p in (tmp_path / "runs" / "wandb").glob("offline-run-*") if p != killed_run]
    assert [p.name.rsplit("-", 1)[1] for p in resumed] == [run_id]  # the same W&B run id, continued
    last = torch.load(tmp_path / "runs" / "cmkd-digits" / run_id / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 12)


_STALL_SECOND_WRITE = """
import sys, time
from pathlib import Path
from cmkd_lightning.callbacks.checkpoint_guard import VerifiedCheckpointIO
calls = []
original = VerifiedCheckpointIO._write
def stalled(self, checkpoint, file):
    calls.append(1)
    if len(calls) < 3:  # epoch 0 writes epoch=0-step=4.ckpt and last.ckpt
        return original(self, checkpoint, file)
    import io, torch
    buffer = io.BytesIO(); torch.save(checkpoint, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2]); file.flush()
    Path(sys.argv[1]).write_text("half written")
    time.sleep(600)
VerifiedCheckpointIO._write = stalled
from cmkd_lightning.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_leaves_the_previous_checkpoint_and_resumes(tmp_path):
    env = _env(tmp_path, WANDB_MODE="offline")
    marker = tmp_path / "writing"
    args = ["fit", "-c", str(DIGITS / "ce.yaml"), *SMALL, *CSV, "--trainer.max_epochs=2"]
    first = _start([str(marker), *args], tmp_path, env, code=_STALL_SECOND_WRITE)
    _kill_when(first, marker)
    folder = tmp_path / "csv" / "digits-ce" / "version_0" / "checkpoints"
    assert list(folder.glob(".*.partial-*"))  # the half-written file is hidden and never named last.ckpt
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 4  # the previous, complete one
    code, output = _finish(_start([*args, "--ckpt_path=last"], tmp_path, env))
    assert code == 0, output[-4000:]
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 8
    assert not (tmp_path / "csv" / "digits-ce" / "version_1").exists()  # the logger run continued in version_0
    assert not list(folder.glob(".*.partial-*"))  # the killed run's leftover went with the next save of its file


def test_a_save_removes_partials_of_dead_processes_only(tmp_path):
    """A leftover of a killed writer is deleted by the next save of the same file; a live writer's is kept."""
    from cmkd_lightning.callbacks.checkpoint_guard import VerifiedCheckpointIO

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # exited: no process has this pid now (unless reused within milliseconds)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "last.ckpt"
        stale = tmp_path / f".last.ckpt.partial-{dead_pid}"
        in_progress = tmp_path / f".last.ckpt.partial-{live.pid}"
        other_file = tmp_path / f".epoch=0-step=4.ckpt.partial-{dead_pid}"
        for path in (stale, in_progress, other_file):
            path.write_bytes(b"half")
        VerifiedCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}}, target)
        assert target.stat().st_size > 0
        assert not stale.exists()
        assert in_progress.exists()  # another process may still be writing it
        assert other_file.exists()  # only leftovers of the file being saved are touched
    finally:
        live.kill()
        live.wait()


# --- 3. Runs never overwrite each other -----------------------------------------------------------------------


@pytest.mark.slow
def test_two_teacher_runs_started_together_keep_their_own_files(tmp_path):
    env = _env(tmp_path, WANDB_MODE="offline")
    args = ["fit", "-c", str(DIGITS / "teacher.yaml"), *SMALL, *CSV, "--trainer.max_epochs=1"]
    runs = [_start(args, tmp_path, env) for _ in range(2)]
    for run in runs:
        code, output = _finish(run)
        assert code == 0, output[-4000:]
    versions = sorted(p.name for p in (tmp_path / "csv" / "digits-teacher").iterdir())
    assert versions == ["version_0", "version_1"]
    for version in versions:
        folder = tmp_path / "csv" / "digits-teacher" / version
        assert (folder / "config.yaml").is_file() and not (folder / "config-1.yaml").exists()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
    link = tmp_path / "runs" / "digits-teacher" / "teacher.ckpt"
    assert link.is_symlink()
    assert link.resolve() in {(tmp_path / "csv" / "digits-teacher" / v / "checkpoints" / "last.ckpt") for v in versions}


def test_publish_checkpoint_refuses_to_replace_a_regular_file(tmp_path):
    from cmkd_lightning.callbacks.checkpoint_link import point_link

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"new")
    (tmp_path / "teacher.ckpt").write_bytes(b"hand-made")
    with pytest.raises(FileExistsError, match="it is a regular file; it was not replaced"):
        point_link(tmp_path / "teacher.ckpt", tmp_path / "run" / "last.ckpt")
    assert (tmp_path / "teacher.ckpt").read_bytes() == b"hand-made"
    point_link(tmp_path / "teacher.ckpt", tmp_path / "run" / "last.ckpt", overwrite=True)
    assert (tmp_path / "teacher.ckpt").read_bytes() == b"new"


# --- 4. Errors a person reads in one line ---------------------------------------------------------------------


def _teacher_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        torch.save({"state_dict": {"student.w": torch.ones(100, 100)}}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong_arch":
        from cmkd_lightning.models import create_model

        torch.save(
            {
                "state_dict": {
                    f"student.{k}": v for k, v in create_model("resnet8", num_classes=100).state_dict().items()
                }
            },
            path,
        )
    return path


@pytest.mark.parametrize(
    ("extra", "code", "last_line"),
    [
        (
            ["--model.init_args.teacher_checkpoint=TMP/empty.ckpt"],
            1,
            "CheckpointReadError: Could not read the checkpoint 'TMP/empty.ckpt': the file is empty (0 bytes)",
        ),
        (
            ["--model.init_args.teacher_checkpoint=TMP/truncated.ckpt"],
            1,
            "CheckpointReadError: Could not read the checkpoint 'TMP/truncated.ckpt': the file is",
        ),
        (
            ["--model.init_args.teacher_checkpoint=TMP/wrong_arch.ckpt"],
            1,
            "InvalidArgumentError: Expected the state_dict in 'TMP/wrong_arch.ckpt'",
        ),
        (
            [
                "--model.init_args.losses=[{class_path: cmkd_lightning.losses.KDLoss, init_args: {temperature: -1}}]",
                "--model.init_args.teacher_checkpoint=null",
            ],
            1,
            "InvalidArgumentError: Expected `temperature` to be a finite number > 0, but got -1.0.",
        ),
        (
            ["--model.init_args.losses=[{class_path: cmkd_lightning.losses.NoSuchLoss}]"],
            2,
            "module 'cmkd_lightning.losses' has no attribute 'NoSuchLoss'",
        ),
        (["--model.init_args.tempreature=3"], 2, "Option 'tempreature' is not accepted"),
        (["--trainer.max_epoch=7"], 2, "unrecognized arguments: --trainer.max_epoch=7"),
    ],
    ids=[
        "empty",
        "truncated",
        "wrong_arch",
        "negative_temperature",
        "unknown_class_path",
        "misspelled_key",
        "prefix_option",
    ],
)
def test_build_errors_end_with_the_library_message(tmp_path, monkeypatch, capsys, extra, code, last_line):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CMKD_VERBOSE", raising=False)
    for kind in ("empty", "truncated", "wrong_arch"):
        _teacher_file(tmp_path, kind)
    extra = [a.replace("TMP", str(tmp_path)) for a in extra]
    got, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "kd.yaml"), *SMALL, "--trainer.logger=false", *extra])
    assert got == code
    assert lines[-1].startswith(last_line.replace("TMP", str(tmp_path))) or last_line in lines[-1], lines[-3:]
    assert not any("Traceback" in line or "Expected a <class 'NoneType'>" in line for line in lines)
    assert "--verbose" in lines[-2]
    if code == 1:
        assert "kd.yaml" in lines[-2]  # the config file the class came from
        assert "`model" in lines[-2]  # and its key


def test_verbose_shows_the_full_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        try:
            main(
                [
                    "fit",
                    "-c",
                    str(DIGITS / "kd.yaml"),
                    "--trainer.logger=false",
                    "--verbose",
                    f"--model.init_args.teacher_checkpoint={tmp_path / 'missing.ckpt'}",
                ]
            )
        except Exception as err:
            raise err.root if hasattr(err, "root") else err from None


# --- 6. W&B with an API key but no reachable server -----------------------------------------------------------


@pytest.mark.slow
def test_wandb_key_without_a_reachable_server_falls_back_to_offline_quickly(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _env(tmp_path, WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    code, output = _finish(
        _start(["fit", "-c", str(DIGITS / "ce.yaml"), *SMALL, "--trainer.max_epochs=1"], tmp_path, env), timeout=120
    )
    assert code == 0, output[-4000:]
    assert f"server http://127.0.0.1:{port} cannot be reached" in output
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert time.monotonic() - start < 90  # wandb.init online would wait ~100 s and then fail


@pytest.mark.slow  # a subprocess, so wandb reads the test's HOME from scratch
def test_wandb_credentials_of_another_host_are_found_by_wandb(tmp_path, monkeypatch):
    from cmkd_lightning.cli import wandb_mode

    (tmp_path / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {'k' * 40}\n")
    (tmp_path / ".netrc").chmod(0o600)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    code = subprocess.run(
        [sys.executable, "-c", "from cmkd_lightning.cli.wandb_mode import _wandb_credentials_host as f; print(f())"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "(True, 'https://wandb.example.org')" in code.stdout, code.stdout + code.stderr
    assert wandb_mode.WANDB_PROBE_TIMEOUT_ENV == "CMKD_WANDB_TIMEOUT"
