r"""Build a teacher-logit cache: every training view of every image through the frozen teacher, once.

Command line (``cmkd-teacher-cache`` or ``python -m cmkd_lightning.teacher_cache``)::

    cmkd-teacher-cache build -c examples/configs/cifar100/_base.yaml \
        -c examples/configs/cifar100/kd/res32x4_res8x4.yaml --output caches/resnet32x4.tlc
    cmkd-teacher-cache build --teacher resnet32x4 --teacher-checkpoint ckpt.pth --data-dir data/cifar100 \
        --output caches/resnet32x4.tlc --dtype float32 --device cuda
    cmkd-teacher-cache info caches/resnet32x4.tlc

The build runs in ``torch.inference_mode`` at a large batch, shows its progress, and records its progress in the
file's header: run the same command again after an interruption and it resumes where it stopped. The file is
preallocated before the first logit is computed (a full disk is an error naming the folder, the bytes needed and
free, not a crash), written under a lock (a second build of the same file is refused while the first runs), and
ends with the SHA-256 of its logits in the header. Bad input ends in two lines on stderr and exit code 1;
``--verbose`` or ``CMKD_VERBOSE=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import fcntl
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmkd_lightning.errors import CMKDError, InvalidArgumentError, TeacherCacheError, TeacherCacheWriteError
from cmkd_lightning.teacher_cache.store import (
    DTYPES,
    FORMAT_VERSION,
    HEADER_BYTES,
    StaleTeacherCacheError,
    TeacherLogitCache,
    _differences,
    binding,
    data_bytes,
    data_sha256,
    logits_sha256,
    read_header,
    remember_verified,
    state_dict_sha256,
    write_header,
)
from cmkd_lightning.teacher_cache.views import NUM_VIEWS, render_all_views, transform_spec

#: Per-channel mean and std of CIFAR-100 (the values of datamodules.CIFAR100DataModule).
_CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
_CIFAR100_STD = (0.2675, 0.2565, 0.2761)
_SPLITS = ("train", "test")
#: Seconds between progress records in the header (what a resumed build skips).
_SAVE_EVERY_S = 10.0
#: ``posix_fallocate`` errors that mean "not supported here": the builder writes zeros instead.
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_ZEROS_CHUNK = 1 << 24
VERBOSE_ENV = "CMKD_VERBOSE"


class TeacherCacheBusyError(TeacherCacheError):
    """Another process is building the same teacher-logit cache file (it holds the file's lock)."""


def _bytes_text(n: int | None) -> str:
    if n is None:
        return "an unknown number of bytes"
    return f"{n:,} bytes ({n / 2**20:,.1f} MiB)"


def _reason(err: OSError) -> str:
    name = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    text = err.strerror or str(err)
    return f"{text} ({name})" if name else text


def _folder_error(output: Path, err: OSError) -> TeacherCacheWriteError:
    """The folder of ``output`` cannot be created: name the part of the path that is in the way."""
    folder = output.parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        why = f"{blocker} is a file, not a folder"
    else:
        why = f"creating it failed: {_reason(err)}"
    return TeacherCacheWriteError(
        f"Expected the folder {folder} of the teacher-logit cache (--output {output}) to exist or be creatable, "
        f"but {why}. Choose another --output."
    )


def _write_error(output: Path, err: OSError, *, needed: int, kept: int | None) -> TeacherCacheWriteError:
    """A failed write of ``output``: a full disk (bytes needed and free), or a folder that refuses writes.

    ``kept`` is the number of images an unfinished file that stays behind holds, or ``None`` if it was removed.
    """
    folder = output.parent
    if err.errno in _NO_SPACE:
        try:
            free: int | None = shutil.disk_usage(folder).free
        except OSError:
            free = None
        left = (
            "Nothing was left behind"
            if kept is None
            else f"The file stays, marked unfinished ({kept} images done), so nothing will read it as complete"
        )
        again = "run the same command again" + (" to resume" if kept is not None else "")
        return TeacherCacheWriteError(
            f"Expected {_bytes_text(needed)} free in {folder} for the teacher-logit cache {output.name}, but the "
            f"disk is full: {_bytes_text(free)} free, {_reason(err)}. {left}: free space (or choose --output on "
            f"a larger disk) and {again}."
        )
    return TeacherCacheWriteError(
        f"Expected to write the teacher-logit cache {output}, but the file system refuses it: {_reason(err)}. "
        f"Make the folder {folder} (and the file, if it exists) writable, or choose another --output."
    )


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while a build checks and creates its file (released on exit).

    Where directories cannot be locked (some network file systems) the exclusive create and the file lock still
    keep two builds apart; only their error message may then name a half-written header.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy(output: Path, header: Mapping[str, Any]) -> TeacherCacheBusyError:
    """Another build holds ``output``: say whether it builds this same cache (wait) or another one (other path)."""
    try:
        diffs = _differences(_short(binding(header)), _short(binding(read_header(output))))
    except (StaleTeacherCacheError, KeyError, TypeError):
        diffs = None
    if diffs == []:
        what, fix = "the same cache", "Wait for it to finish: running this command again then reuses its file."
    else:
        what = "a cache of another teacher or data" + (f" ({'; '.join(diffs)[:300]})" if diffs else "")
        fix = "Choose another --output, or wait for it to finish and replace its file with --overwrite."
    return TeacherCacheBusyError(
        f"Expected to be the only build writing {output}, but another process is building {what} there now (it "
        f"holds the file's lock). {fix}"
    )


def _open_output(output: Path, header: dict[str, Any], overwrite: bool) -> tuple[int | None, dict[str, Any], int, bool]:
    """Open ``output`` for the build, locked: ``(fd, header, images already done, created now)``.

    ``fd`` is ``None`` when ``output`` already holds this complete cache. A file bound to anything else is refused
    unless ``overwrite``, which unlinks it (a run reading the old file keeps its own copy of the inode) and creates a
    new one. A file another build holds is refused.
    """
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error(output, err) from err
    if output.is_dir():
        raise TeacherCacheWriteError(
            f"Expected --output {output} to name a file, but it is a folder. Give a file name, e.g. "
            f"{output / 'teacher.tlc'}."
        )
    with _folder_lock(folder):
        if output.exists():
            try:
                fd = os.open(output, os.O_RDWR)
            except OSError as err:
                with contextlib.suppress(StaleTeacherCacheError, KeyError, TypeError, OSError):
                    old = read_header(output)  # a finished cache of this binding on a read-only disk is reused
                    if old.get("complete") and binding(old) == binding(header):
                        return None, old, int(old["images_done"]), False
                raise _write_error(output, err, needed=HEADER_BYTES + data_bytes(header), kept=None) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _busy(output, header) from None
            if not overwrite and os.fstat(fd).st_size > 0:
                try:
                    old = read_header(output)
                    diffs = _differences(_short(binding(header)), _short(binding(old)))
                except (StaleTeacherCacheError, KeyError, TypeError) as err:
                    old, diffs = None, [f"not a readable cache ({' '.join(str(err).split())[:200]})"]
                if diffs:
                    os.close(fd)
                    raise StaleTeacherCacheError(
                        f"Expected {output} to be absent or a cache of this teacher, data, transform and dtype (to "
                        f"resume it), but it holds another ({'; '.join(diffs)[:400]}). Pass --overwrite "
                        "(`overwrite=True`) to replace it, or choose another --output."
                    )
                if old["complete"]:
                    os.close(fd)
                    return None, old, int(old["images_done"]), False
                return fd, old, int(old["images_done"]), False
            try:
                os.unlink(output)  # replaced, not truncated: readers of the old file keep their inode
            except OSError as err:
                raise _write_error(output, err, needed=HEADER_BYTES + data_bytes(header), kept=None) from err
            finally:
                os.close(fd)
        try:
            fd = os.open(output, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise _busy(output, header) from None  # only without the folder lock: another build created it just now
        except OSError as err:
            raise _write_error(output, err, needed=HEADER_BYTES + data_bytes(header), kept=None) from err
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            write_header(fd, header)
        except OSError as err:
            os.close(fd)
            _remove(output)
            raise _write_error(output, err, needed=HEADER_BYTES + data_bytes(header), kept=None) from err
        return fd, header, 0, True


def _short(value: Any) -> Any:
    """``value`` with hex digests cut to 12 characters, for messages."""
    if isinstance(value, Mapping):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."
    return value


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _preallocate(fd: int, start: int, total: int) -> None:
    """Reserve the file's ``total`` bytes on disk, so that a full disk fails here and not in the middle of a write.

    ``posix_fallocate`` where the file system supports it; elsewhere zeros are written from ``start`` on (the bytes
    before it hold logits already) and flushed.
    """
    fallocate = getattr(os, "posix_fallocate", None)  # absent on macOS
    try:
        if fallocate is not None:
            fallocate(fd, 0, total)
            return
    except OSError as err:
        if err.errno not in _NO_FALLOCATE:
            raise
    zeros = bytes(min(_ZEROS_CHUNK, max(total - start, 1)))
    offset = start
    while offset < total:
        offset += os.pwrite(fd, zeros[: total - offset], offset)
    os.fsync(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Progress:
    """A one-line progress report on stderr, at most once per second (and at the end)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 1.0):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        eta_text = "?" if math.isinf(eta) else str(_dt.timedelta(seconds=round(eta)))
        end = "\n" if final else ("\r" if sys.stderr.isatty() else "\n")
        sys.stderr.write(
            f"teacher cache: {done}/{self.total} images ({100 * done / self.total:.1f} %), "
            f"{rate:.2f} images/s ({rate * NUM_VIEWS:.0f} views/s), ETA {eta_text}{end}"
        )
        sys.stderr.flush()


def build_cache(
    teacher: nn.Module,
    images: np.ndarray,
    targets: Sequence[int] | np.ndarray,
    output: str | Path,
    *,
    dataset: str = "cifar100",
    split: str = "train",
    mean: Sequence[float] = _CIFAR100_MEAN,
    std: Sequence[float] = _CIFAR100_STD,
    dtype: str = "float16",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    teacher_name: str | None = None,
    checkpoint: str | None = None,
    synthetic: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TeacherLogitCache:
    """Write the teacher's logits for all 162 views of every image to ``output`` and return the opened cache.

    An existing file bound to the same teacher, data, transform, split and dtype is resumed (or returned as it is
    when complete); one bound to anything else is refused unless ``overwrite``.

    Args:
        teacher: the frozen network (its weights are hashed into the header).
        images: ``(N, 32, 32, 3)`` uint8 images of the split, as stored.
        targets: ``N`` labels (hashed with the images, so a cache of other data is refused).
        output: the cache file to write.
        dataset: dataset name recorded in the header.
        split: ``"train"`` or ``"test"``.
        mean: per-channel mean of the normalisation.
        std: per-channel std of the normalisation.
        dtype: ``"float16"`` (half the size, fp16 rounding) or ``"float32"``.
        batch_size: views per teacher forward (rounded down to whole images of 162 views, at least one image).
        device: where the teacher runs; ``None``: CUDA when available, else CPU.
        teacher_name: model-zoo name recorded in the header (for ``info``).
        checkpoint: checkpoint path recorded in the header (for ``info`` and error messages).
        synthetic: record that the images are a synthetic stand-in.
        overwrite: replace an existing file bound to something else.
        progress: report progress on stderr.

    Returns:
        The built :class:`TeacherLogitCache`.

    Raises:
        ValueError: on bad arguments.
        TeacherCacheError: if ``device`` does not exist on this machine.
        StaleTeacherCacheError: if ``output`` holds a cache bound to something else and ``overwrite`` is False.
        TeacherCacheBusyError: if another process is building ``output`` now.
        TeacherCacheWriteError: if the folder cannot be created or written, or the disk is full (the error names the
            folder and the bytes needed and free; a file created by this call is removed, a resumed one stays
            marked unfinished).
    """
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"Expected `dtype` to be one of {tuple(DTYPES)}, but got {dtype!r}.")
    if split not in _SPLITS:
        raise InvalidArgumentError(f"Expected `split` to be one of {_SPLITS}, but got {split!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"Expected `batch_size` to be an int >= 1, but got {batch_size!r}.")
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) < 1:
        raise InvalidArgumentError(
            f"Expected `images` to be uint8 of shape (N, 32, 32, 3) with N >= 1, but got {images.dtype} of shape "
            f"{images.shape}."
        )
    if len(targets) != len(images):
        raise InvalidArgumentError(f"Expected one target per image ({len(images)}), but got {len(targets)}.")
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        teacher = teacher.to(device).eval()
    except (RuntimeError, AssertionError, ValueError) as err:  # torch: no driver / not compiled with CUDA
        raise TeacherCacheError(
            f"Expected `device` (--device) to be a device of this machine, but got {str(device)!r}: "
            f"{' '.join(str(err).split())[:200]} Use --device cpu or another device."
        ) from err
    output = Path(output).expanduser()
    with torch.inference_mode():
        probe = teacher(render_all_views(images[:1], mean, std)[:1].to(device))
    num_classes = int(probe.shape[-1])
    header: dict[str, Any] = {
        "format": "cmkd-teacher-logit-cache",
        "version": FORMAT_VERSION,
        "teacher": {"name": teacher_name, "checkpoint": checkpoint, "weights_sha256": state_dict_sha256(teacher)},
        "dataset": {
            "name": dataset,
            "split": split,
            "num_images": len(images),
            "data_sha256": data_sha256(images, targets),
            "synthetic": bool(synthetic),
        },
        "transform": transform_spec(mean, std),
        "num_classes": num_classes,
        "num_views": NUM_VIEWS,
        "dtype": dtype,
        "shape": [len(images), NUM_VIEWS, num_classes],
        "images_done": 0,
        "complete": False,
        "build_seconds": 0.0,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    fd, header, start, created = _open_output(output, header, overwrite)
    if fd is None:
        return TeacherLogitCache(output)
    try:
        _fill(fd, output, header, start, created, teacher, images, mean, std, device, batch_size, progress)
    finally:
        os.close(fd)  # releases the file's lock
    return TeacherLogitCache(output)


def _fill(
    fd: int,
    output: Path,
    header: dict[str, Any],
    start: int,
    created: bool,
    teacher: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> None:
    """Preallocate ``fd``, write the logits of images ``start`` on, then the checksum and ``complete`` in the header."""
    dtype, (num_images, num_views, num_classes) = header["dtype"], header["shape"]
    total = HEADER_BYTES + data_bytes(header)
    row_bytes = num_views * num_classes * DTYPES[dtype].itemsize
    try:
        _preallocate(fd, HEADER_BYTES + start * row_bytes, total)
    except OSError as err:
        if created:
            _remove(output)  # nothing computed yet: leave nothing behind
        raise _write_error(output, err, needed=total, kept=None if created else start) from err
    per_chunk = max(1, batch_size // NUM_VIEWS)
    bar = _Progress(num_images, start, progress)
    t0, last_save = time.perf_counter(), time.perf_counter()
    seconds_before = float(header.get("build_seconds", 0.0))
    try:
        with torch.inference_mode():
            for begin in range(start, num_images, per_chunk):
                end = min(begin + per_chunk, num_images)
                views = render_all_views(images[begin:end], mean, std).to(device)
                out = teacher(views).float().reshape(end - begin, NUM_VIEWS, num_classes)
                rows = out.to(torch.float16 if dtype == "float16" else torch.float32).cpu().numpy()
                _pwrite_all(fd, rows.astype(DTYPES[dtype], copy=False).tobytes(), HEADER_BYTES + begin * row_bytes)
                if time.perf_counter() - last_save >= _SAVE_EVERY_S or end == num_images:
                    os.fsync(fd)  # the logits reach the disk before the header counts them
                    header["images_done"] = end
                    header["build_seconds"] = seconds_before + time.perf_counter() - t0
                    write_header(fd, header)
                    last_save = time.perf_counter()
                bar.update(end, final=end == num_images)
        header["logits_sha256"] = logits_sha256(output)
        header["complete"] = True
        write_header(fd, header)
    except OSError as err:
        raise _write_error(output, err, needed=total, kept=int(header["images_done"])) from err
    remember_verified(output, header["logits_sha256"])


# ---------------------------------------------------------------------------------------------------------------- CLI


def _merged_configs(paths: Sequence[str]) -> dict[str, Any]:
    import yaml

    def merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in b.items():
            a[key] = merge(dict(a.get(key) or {}), value) if isinstance(value, Mapping) else value
        return a

    out: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                loaded = yaml.safe_load(file) or {}
        except OSError as err:
            raise TeacherCacheError(
                f"Expected -c/--config {path} to be a readable YAML file, but {_reason(err)}. Check the path."
            ) from err
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            first = " ".join(str(err).split())[:200]
            raise TeacherCacheError(
                f"Expected -c/--config {path} to be a UTF-8 YAML file, but reading it failed: {first}. Fix the file."
            ) from err
        if not isinstance(loaded, Mapping):
            raise TeacherCacheError(
                f"Expected -c/--config {path} to hold a YAML mapping (model:, data:, ...), but it holds a "
                f"{type(loaded).__name__}."
            )
        out = merge(out, loaded)
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}")
    return value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cmkd-teacher-cache", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help=f"show the full traceback of an error ({VERBOSE_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", parents=[common], help="build (or resume) a cache for a teacher and the CIFAR-100 training split"
    )
    b.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        help="cmkd YAML config(s), merged in order: "
        "model.init_args.teacher / teacher_checkpoint / teacher_checkpoint_part / num_classes and "
        "data.init_args.data_dir / synthetic / synthetic_size are read from them",
    )
    b.add_argument("--teacher", help="model-zoo name of the teacher (e.g. resnet32x4)")
    b.add_argument("--teacher-checkpoint", help="the teacher's weights file")
    b.add_argument("--teacher-checkpoint-part", choices=("student", "teacher"), default=None)
    b.add_argument("--num-classes", type=_positive_int, default=None, help="default: 100")
    b.add_argument("--data-dir", help="directory holding cifar-100-python/ (default: data)")
    b.add_argument("--synthetic", action="store_true", default=None, help="the data module's synthetic images")
    b.add_argument("--synthetic-size", type=_positive_int, default=None)
    b.add_argument("--split", choices=_SPLITS, default="train")
    b.add_argument("--output", "-o", required=True, help="the cache file to write")
    b.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float16",
        help="float16: 1.62 GB for CIFAR-100's 50,000 images; float32: 3.24 GB (default: %(default)s)",
    )
    b.add_argument("--batch-size", type=_positive_int, default=1024, help="views per forward (default: %(default)s)")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    b.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing file bound to something else")
    b.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("info", parents=[common], help="print a cache's header")
    i.add_argument("path")
    v = sub.add_parser(
        "verify", parents=[common], help="check a cache's header and hash its logits against the recorded SHA-256"
    )
    v.add_argument("path")
    return parser.parse_args(argv)


def _build_from_args(a: argparse.Namespace) -> TeacherLogitCache:
    from cmkd_lightning.checkpoint import load_weights
    from cmkd_lightning.models import create_model
    from datamodules.cifar100 import CIFAR100_MEAN, CIFAR100_STD, cifar100_images

    config = _merged_configs(a.config)
    model = (config.get("model") or {}).get("init_args") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    name = a.teacher or model.get("teacher")
    ckpt = a.teacher_checkpoint or model.get("teacher_checkpoint")
    part = a.teacher_checkpoint_part or model.get("teacher_checkpoint_part")
    num_classes = a.num_classes or model.get("num_classes") or 100
    if not isinstance(name, str):
        raise TeacherCacheError(
            f"Expected a teacher model-zoo name (--teacher, or model.init_args.teacher in a -c config), but got "
            f"{name!r}. Pass e.g. --teacher resnet32x4 (`cmkd list models` lists them)."
        )
    synthetic = a.synthetic if a.synthetic is not None else bool(data.get("synthetic", False))
    size = a.synthetic_size or data.get("synthetic_size") or 1024
    data_dir = a.data_dir or data.get("data_dir") or "data"
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    try:
        teacher = create_model(name, num_classes=num_classes)
    except (ValueError, TypeError, KeyError) as err:
        raise TeacherCacheError(f"--teacher {name!r}: {' '.join(str(err).split())}") from err
    if ckpt is None:
        print(
            "cmkd-teacher-cache: no teacher checkpoint given: the teacher keeps its random initial weights.",
            file=sys.stderr,
        )
    else:
        try:
            load_weights(teacher, ckpt, part=part)
        except (OSError, ValueError, RuntimeError) as err:
            fix = " Train the teacher first, or pass its weights file." if isinstance(err, FileNotFoundError) else ""
            raise TeacherCacheError(
                f"--teacher-checkpoint {ckpt} (teacher {name}): {' '.join(str(err).split())[:600]}{fix}"
            ) from err
    try:
        images, targets = cifar100_images(data_dir, train=a.split == "train", synthetic=synthetic, synthetic_size=size)
    except (OSError, ValueError) as err:
        raise TeacherCacheError(f"--data-dir {data_dir}: {' '.join(str(err).split())[:600]}") from err
    return build_cache(
        teacher, images, targets, a.output, split=a.split, mean=CIFAR100_MEAN, std=CIFAR100_STD, dtype=a.dtype,
        batch_size=a.batch_size, device=a.device, teacher_name=name, checkpoint=ckpt, synthetic=synthetic,
        overwrite=a.overwrite, progress=not a.no_progress,
    )  # fmt: skip


def _run(a: argparse.Namespace) -> None:
    if a.command == "info":
        import json

        print(json.dumps(read_header(a.path), indent=1, sort_keys=True))
        return
    if a.command == "verify":
        t0 = time.perf_counter()
        cache = TeacherLogitCache(a.path)
        if "logits_sha256" in cache.header:
            cache.verify(force=True)
            print(f"{cache.path}: logits match their SHA-256 ({time.perf_counter() - t0:.1f} s).")
        return
    t0 = time.perf_counter()
    cache = _build_from_args(a)
    h = cache.header
    print(
        f"{cache.path}: {h['shape'][0]} images x {h['shape'][1]} views x {h['shape'][2]} classes, {h['dtype']}, "
        f"{cache.path.stat().st_size / 1e9:.2f} GB; teacher {h['teacher']['name']} "
        f"(weights sha256 {h['teacher']['weights_sha256'][:12]}...), built in {h['build_seconds']:.1f} s "
        f"({time.perf_counter() - t0:.1f} s this call)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``cmkd-teacher-cache``.

    A library error (:class:`~cmkd_lightning.errors.CMKDError`: a cache of other data, a build of the same file
    already running, a missing checkpoint, a read-only folder, a full disk) ends the process with exit code 1 and
    two lines on stderr, the second naming the file or argument, what was expected and the fix; ``--verbose`` or
    ``CMKD_VERBOSE=1`` raises it with its traceback instead. Ctrl-C exits with 130 and says how to resume.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    a = _parse([arg for arg in args if arg != "--verbose"])
    hint = f"cmkd-teacher-cache: error; full traceback: add --verbose or set {VERBOSE_ENV}=1."
    try:
        _run(a)
    except CMKDError as err:
        if verbose:
            raise
        sys.stderr.write(f"{hint}\n{' '.join(str(err).split()) or type(err).__name__}\n")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if verbose:
            raise
        sys.stderr.write("cmkd-teacher-cache: interrupted; run the same command again to resume the build.\n")
        raise SystemExit(130) from None


__all__ = ["TeacherCacheBusyError", "build_cache", "main"]
