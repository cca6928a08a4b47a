"""Faults and bad input against ``cmkd-teacher-cache`` (issue 23): each ends in at most three lines and exit 1.

The command runs in this process (``main`` with ``capsys``) on two synthetic images and ``resnet8``, about a second
a build; the subprocess probes (the real exit code of ``python -m cmkd_lightning.teacher_cache``, two builds racing)
are marked slow. A full disk is simulated by making ``posix_fallocate`` / ``pwrite`` fail with ``ENOSPC``, and, where
the tests may mount one (root), on a real 64 KiB tmpfs. Root ignores permission bits, so a read-only folder is a
path under a regular file, or a folder with the immutable attribute (``chattr +i``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmkd_lightning.errors import CMKDError, TeacherCacheError, TeacherCacheWriteError
from cmkd_lightning.teacher_cache import (
    CorruptTeacherCacheError,
    StaleTeacherCacheError,
    TeacherLogitCache,
    main,
    read_header,
)
from cmkd_lightning.teacher_cache import store as store_module
from cmkd_lightning.teacher_cache.store import HEADER_BYTES
from tests.reliability._cli import REPO, _env

SIZE = 2 * 162 * 100 * 2 + HEADER_BYTES  # two synthetic images, 100 classes, float16
BUILD = ["build", "--teacher", "resnet8", "--synthetic", "--synthetic-size", "2", "--no-progress", "--threads", "1"]
BUILD += ["--batch-size", "324"]


def _cache_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``cmkd-teacher-cache`` in this process; its exit code and the non-empty lines it wrote to stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    err = capsys.readouterr().err
    return info.value.code, [line for line in err.splitlines() if line.strip()]


def _assert_short(code: int, lines: list[str], *needles: str) -> None:
    """Exit 1, at most three lines, the traceback hint, and the last line holding every needle."""
    assert code == 1, lines
    assert 1 <= len(lines) <= 3, lines
    assert "Traceback" not in "\n".join(lines)
    assert lines[-2] == "cmkd-teacher-cache: error; full traceback: add --verbose or set CMKD_VERBOSE=1.", lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def _never_complete(path: Path) -> None:
    """``path`` is gone, or is refused as unfinished: nothing reads it as a whole cache."""
    if path.exists():
        with pytest.raises(StaleTeacherCacheError, match="the build was interrupted"):
            TeacherLogitCache(path)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- a cache that is not what the run needs ---------------------------------------------------------------------


def test_a_cache_of_other_data_is_refused_in_two_lines_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    capsys.readouterr()
    code, lines = _cache_cli(capsys, *BUILD, "--synthetic-size", "3", "--output", str(out))
    _assert_short(code, lines, str(out), "dataset.num_images: cache has 2, expected 3", "Pass --overwrite")
    assert read_header(out)["dataset"]["num_images"] == 2  # untouched
    main([*BUILD, "--synthetic-size", "3", "--output", str(out), "--overwrite"])
    assert TeacherLogitCache(out).num_images == 3


def test_a_second_build_of_a_file_being_built_is_refused(tmp_path, capsys):
    """Another build holds the file's lock (here: this test, as the other process would)."""
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    capsys.readouterr()
    fd = os.open(out, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, lines = _cache_cli(capsys, *BUILD, "--teacher", "resnet14", "--output", str(out), "--overwrite")
        same_code, same_lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    finally:
        os.close(fd)
    _assert_short(same_code, same_lines, str(out), "building the same cache there now", "Wait for it to finish")
    _assert_short(code, lines, str(out), "another process is building a cache of another teacher or data")
    assert "weights_sha256: cache has" in lines[-1] and "Choose another --output" in lines[-1]
    assert TeacherLogitCache(out).header["teacher"]["name"] == "resnet8"  # the first build's cache, whole


def test_a_missing_teacher_checkpoint_is_named_with_the_fix(tmp_path, capsys):
    missing = tmp_path / "runs" / "teacher.ckpt"
    code, lines = _cache_cli(capsys, *BUILD, "--teacher-checkpoint", str(missing), "--output", str(tmp_path / "c.tlc"))
    _assert_short(code, lines, f"--teacher-checkpoint {missing}", "Train the teacher first")
    assert not (tmp_path / "c.tlc").exists()


def test_a_bad_config_teacher_name_or_device_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"model:\n  init_args:\n    teacher: r\xe9snet8\n")
    code, lines = _cache_cli(capsys, *BUILD, "-c", str(bad), "--output", str(tmp_path / "c.tlc"))
    _assert_short(code, lines, f"-c/--config {bad}", "UTF-8 YAML")
    code, lines = _cache_cli(capsys, *BUILD, "--teacher", "resnet9", "--output", str(tmp_path / "c.tlc"))
    _assert_short(code, lines, "--teacher 'resnet9'", "Expected `name` to be one of")
    code, lines = _cache_cli(capsys, *BUILD, "--device", "nodevice", "--output", str(tmp_path / "c.tlc"))
    _assert_short(code, lines, "--device", "'nodevice'", "Use --device cpu")
    assert not (tmp_path / "c.tlc").exists()


def test_garbage_in_the_logits_is_refused_by_verify_and_by_opening(tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    main(["verify", str(out)])
    assert "logits match their SHA-256" in capsys.readouterr().out
    with open(out, "r+b") as file:
        file.seek(HEADER_BYTES + 1000)
        file.write(b"\x00\x3c" * 50)  # float16 1.0, finite
    monkeypatch.setattr(store_module, "_VERIFIED", {})  # as a new process
    code, lines = _cache_cli(capsys, "verify", str(out))
    _assert_short(code, lines, str(out), "changed or damaged", f"cmkd-teacher-cache build --overwrite --output {out}")
    with pytest.raises(CorruptTeacherCacheError):
        TeacherLogitCache(out)
    code, lines = _cache_cli(capsys, "info", str(tmp_path / "missing.tlc"))
    _assert_short(code, lines, str(tmp_path / "missing.tlc"), "Build it with")


def test_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
    args = [*BUILD, "--teacher-checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "c.tlc")]
    with pytest.raises(TeacherCacheError, match="--teacher-checkpoint"):
        main([*args, "--verbose"])
    monkeypatch.setenv("CMKD_VERBOSE", "1")
    with pytest.raises(TeacherCacheError, match="--teacher-checkpoint"):
        main(args)


# --- read-only folders ----------------------------------------------------------------------------------------


def test_an_output_under_a_regular_file_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "caches" / "c.tlc"
    code, lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    _assert_short(code, lines, str(out.parent), f"{tmp_path / 'file'} is a file, not a folder", "another --output")


@pytest.fixture
def immutable_folder(tmp_path):
    """A folder that refuses new files, also for root: the immutable attribute (``chattr +i``)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def test_a_read_only_folder_is_named_with_the_reason_and_the_fix(immutable_folder, capsys):
    with pytest.raises(OSError):
        (immutable_folder / "probe").write_text("x")  # the folder really refuses writes, root or not
    out = immutable_folder / "c.tlc"
    code, lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    _assert_short(code, lines, str(out), "refuses it", "EPERM", f"Make the folder {immutable_folder} (and")
    assert list(immutable_folder.iterdir()) == []


def test_a_finished_cache_in_a_read_only_file_is_reused_and_another_is_refused(tmp_path, capsys):
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        main([*BUILD, "--output", str(out)])  # the same cache: nothing to write
        assert "2 images x 162 views x 100 classes" in capsys.readouterr().out
        code, lines = _cache_cli(capsys, *BUILD, "--synthetic-size", "3", "--output", str(out))
        _assert_short(code, lines, str(out), "refuses it", "EPERM")
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=False)


# --- a full disk ----------------------------------------------------------------------------------------------


def test_a_full_disk_at_preallocation_names_folder_and_bytes_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    out = tmp_path / "c.tlc"
    code, lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    free = shutil.disk_usage(tmp_path).free
    _assert_short(code, lines, f"Expected {SIZE:,} bytes", f"free in {tmp_path} for the teacher-logit cache c.tlc")
    found = re.search(
        r"the disk is full: ([\d,]+) bytes \([\d.,]+ MiB\) free, No space left on device \(ENOSPC\)\.", lines[-1]
    )
    assert found, lines[-1]
    reported = int(found.group(1).replace(",", ""))
    assert abs(reported - free) < 2**30  # what shutil.disk_usage said (other jobs write to this disk meanwhile)
    assert "Nothing was left behind" in lines[-1]
    assert not out.exists()


def test_a_full_disk_while_writing_keeps_an_unfinished_file_that_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.tlc"
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: _enospc() if at >= HEADER_BYTES else real(fd, data, at))
    code, lines = _cache_cli(capsys, *BUILD, "--batch-size", "162", "--output", str(out))
    _assert_short(code, lines, str(tmp_path), "marked unfinished (0 images done)", "run the same command again")
    _never_complete(out)
    assert out.exists()
    monkeypatch.setattr(os, "pwrite", real)
    main([*BUILD, "--output", str(out)])  # space again: the same command finishes it
    assert TeacherLogitCache(out).num_images == 2


def test_a_full_disk_when_resuming_keeps_the_progress(tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    capsys.readouterr()
    header = read_header(out)
    header.update(complete=False, images_done=1)
    del header["logits_sha256"]
    store_module.write_header(out, header)
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    code, lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    _assert_short(code, lines, "marked unfinished (1 images done)", "to resume")
    assert read_header(out)["images_done"] == 1
    _never_complete(out)


def test_without_fallocate_zeros_are_written_and_a_resumed_build_keeps_its_rows(tmp_path, capsys, monkeypatch):
    reference = tmp_path / "ref.tlc"
    main([*BUILD, "--output", str(reference)])

    def unsupported(*args):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    out = tmp_path / "c.tlc"
    main([*BUILD, "--output", str(out)])
    assert out.read_bytes()[HEADER_BYTES:] == reference.read_bytes()[HEADER_BYTES:]
    header = read_header(out)
    header.update(complete=False, images_done=1)
    store_module.write_header(out, header)
    main([*BUILD, "--output", str(out)])
    assert out.read_bytes()[HEADER_BYTES:] == reference.read_bytes()[HEADER_BYTES:]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB file system (tmpfs); skipped where this user may not mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("fallocate", [True, False], ids=["fallocate", "zeros"])
def test_a_really_full_disk_is_an_error_not_a_bus_error(small_tmpfs, capsys, monkeypatch, fallocate):
    if not fallocate:
        monkeypatch.setattr(os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "")))
    out = small_tmpfs / "c.tlc"
    code, lines = _cache_cli(capsys, *BUILD, "--output", str(out))
    _assert_short(code, lines, f"Expected {SIZE:,} bytes (0.1 MiB) free in {small_tmpfs}", "disk is full", "ENOSPC")
    assert "Nothing was left behind" in lines[-1]
    assert list(small_tmpfs.iterdir()) == []


# --- the real command, as a person runs it ----------------------------------------------------------------------


def _command(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cmkd_lightning.teacher_cache", *args], cwd=cwd, env=_env(cwd), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_the_command_exits_1_with_two_lines_and_verbose_gives_the_traceback(tmp_path):
    args = [*BUILD, "--teacher-checkpoint", "nope.pth", "--output", "c.tlc"]
    quiet, verbose = _command(args, tmp_path), _command([*args, "--verbose"], tmp_path)
    (_, err), (_, verbose_err) = quiet.communicate(timeout=300), verbose.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    _assert_short(quiet.returncode, lines, "--teacher-checkpoint nope.pth", "Train the teacher first")
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose_err
    assert verbose_err.rstrip().splitlines()[-1].startswith("cmkd_lightning.errors.TeacherCacheError: --teacher-")


@pytest.mark.slow
def test_two_builds_racing_with_different_teachers_leave_one_whole_cache(tmp_path):
    out = tmp_path / "c.tlc"
    runs = {t: _command([*BUILD, "--teacher", t, "--output", str(out)], tmp_path) for t in ("resnet8", "resnet14")}
    results = {t: p.communicate(timeout=300) for t, p in runs.items()}
    codes = {t: runs[t].returncode for t in runs}
    assert sorted(codes.values()) == [0, 1], results
    loser = next(t for t, c in codes.items() if c == 1)
    lines = [line for line in results[loser][1].splitlines() if line.strip()]
    assert len(lines) <= 3 and str(out) in lines[-1], lines
    assert "another process is building a cache of another" in lines[-1] or "holds another" in lines[-1], lines
    winner = next(t for t, c in codes.items() if c == 0)
    store_module._VERIFIED.clear()
    cache = TeacherLogitCache(out)  # whole, and its logits hash to the recorded SHA-256
    assert cache.header["teacher"]["name"] == winner and cache.header["complete"]


def test_the_library_errors_are_cmkd_errors():
    assert issubclass(StaleTeacherCacheError, CMKDError) and issubclass(StaleTeacherCacheError, ValueError)
    assert issubclass(CorruptTeacherCacheError, StaleTeacherCacheError)
    assert issubclass(TeacherCacheWriteError, CMKDError) and issubclass(TeacherCacheWriteError, OSError)


# --- cmkd fit with a damaged cache ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cmkd_fit_refuses_a_cache_with_garbage_logits_before_training(tmp_path, capsys, monkeypatch):
    """Issue 23: finite garbage over the array trained without a word; now the run stops in two lines."""
    import torch

    from cmkd_lightning.models import create_model
    from cmkd_lightning.teacher_cache import build_cache
    from datamodules.cifar100 import cifar100_images
    from tests.reliability._cli import _cli_error

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    teacher = create_model("resnet8", num_classes=100)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    images, targets = cifar100_images("data", synthetic=True, synthetic_size=4)
    out = tmp_path / "c.tlc"
    build_cache(teacher, images, targets, out, progress=False, batch_size=324)
    with open(out, "r+b") as file:
        file.seek(HEADER_BYTES + 5000)
        file.write(b"\x00\x3c" * 100)  # float16 1.0: finite, plausible logits
    monkeypatch.setattr(store_module, "_VERIFIED", {})  # as a new process
    configs = REPO / "examples" / "configs" / "cifar100"
    code, lines = _cli_error(
        capsys,
        [
            "fit", "-c", str(configs / "_base.yaml"), "-c", str(configs / "kd" / "res32x4_res8x4.yaml"),
            "--model.init_args.teacher=resnet8", f"--model.init_args.teacher_checkpoint={tmp_path / 'teacher.pth'}",
            "--data.init_args.synthetic=true", "--data.init_args.synthetic_size=4", "--data.init_args.num_workers=0",
            f"--data.init_args.teacher_cache={out}", f"--model.init_args.teacher_cache={out}",
            "--trainer.logger=false", "--trainer.max_epochs=1",
        ],
    )  # fmt: skip
    assert code == 1
    assert "CorruptTeacherCacheError" in lines[-1] and str(out) in lines[-1], lines[-3:]
    assert f"cmkd-teacher-cache build --overwrite --output {out}" in lines[-1]
    assert not (tmp_path / "lightning_logs").exists()
