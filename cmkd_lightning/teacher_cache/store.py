r"""The teacher-logit cache file: header, fingerprints, validation and memory-mapped lookup.

Layout of one file (little-endian):

- bytes ``[0, 8)``: the magic ``b"CMKDTLC1"``; bytes ``[8, 16)``: the header length ``L`` (uint64);
- bytes ``[16, 16 + L)``: the header, UTF-8 JSON (teacher weights hash, data hash, transform, split, class count,
  dtype, shape, build progress, and once complete the SHA-256 of the logits); the header area is ``HEADER_BYTES``
  long, so progress is rewritten in place; padded with spaces;
- the last ``TRAILER_BYTES`` of the header area: ``b"\n#header-sha256:"`` and the hex SHA-256 of everything before
  it in the area (files written before this trailer existed have spaces there and are read without the check);
- from ``HEADER_BYTES`` on: the logits, a C-ordered ``(num_images, num_views, num_classes)`` array of ``float16``
  or ``float32``; row ``[i, v]`` is the teacher's output on view ``v`` of image ``i``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cmkd_lightning.errors import InvalidArgumentError, TeacherCacheError, TeacherCacheWriteError

MAGIC = b"CMKDTLC1"
HEADER_BYTES = 4096
FORMAT_VERSION = 1
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
TRAILER_TAG = b"\n#header-sha256:"
TRAILER_BYTES = len(TRAILER_TAG) + 64
#: Bytes read per step when hashing the logits.
HASH_CHUNK = 1 << 24
#: (device, inode, size, mtime_ns) of files whose logits this process hashed, with the hash they had.
_VERIFIED: dict[tuple[int, int, int, int], str] = {}
#: Files without a logits checksum that this process already warned about.
_WARNED_UNCHECKED: set[str] = set()


class StaleTeacherCacheError(TeacherCacheError):
    """A teacher-logit cache that does not belong to this teacher, data, transform or class count, or is unfinished.

    A :class:`~cmkd_lightning.errors.CMKDError` (``cmkd`` prints it in a few lines) and a ``ValueError``.
    """


class CorruptTeacherCacheError(StaleTeacherCacheError):
    """A teacher-logit cache whose logits or header no longer hash to what its build recorded."""


class TeacherCacheNotFoundError(StaleTeacherCacheError, FileNotFoundError):
    """A teacher-logit cache path where there is no file."""


def rebuild_hint(path: str | os.PathLike[str], header: Mapping[str, Any] | None = None) -> str:
    """The command that replaces a damaged or stale cache, with what the header says it was built from."""
    fix = f"Rebuild it with `cmkd-teacher-cache build --overwrite --output {path}`"
    if not header:
        return fix + " and the teacher and data it is for."
    teacher = header.get("teacher") or {}
    dataset = header.get("dataset") or {}
    source = f"teacher {teacher.get('name')!r}, checkpoint {teacher.get('checkpoint')!r}"
    source += f", {dataset.get('name')} {dataset.get('split')!r} split, {header.get('dtype')}"
    return f"{fix} and the teacher and data it was built from ({source})."


def state_dict_sha256(model: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a network's weights: every state_dict entry's name, dtype, shape and bytes, in sorted key order.

    ``num_batches_tracked`` counters (no effect on outputs) are left out, and a ``torch.compile`` wrapper's
    ``_orig_mod.`` prefix is dropped, so the hash names the function the network computes in eval mode.

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> state_dict_sha256(a) == state_dict_sha256(b)
        True
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    entries = {k.replace("_orig_mod.", ""): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for key in sorted(entries):
        tensor = entries[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_sha256(images: np.ndarray, targets: Sequence[int] | np.ndarray) -> str:
    """SHA-256 of a split's ``uint8`` images (as stored, ``(N, H, W, 3)``) and its labels.

    Example:
        >>> data_sha256(np.zeros((1, 2, 2, 3), np.uint8), [0]) == data_sha256(np.zeros((1, 2, 2, 3), np.uint8), [1])
        False
    """
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{images.dtype}|{images.shape}|".encode())
    digest.update(images.tobytes())
    digest.update(np.asarray(targets, dtype="<i8").tobytes())
    return digest.hexdigest()


def binding(header: Mapping[str, Any]) -> dict[str, Any]:
    """What a cache is bound to: teacher weights, dataset split and data, transform, class count and dtype."""
    return {
        "weights_sha256": header["teacher"]["weights_sha256"],
        "dataset": header["dataset"],
        "transform": header["transform"],
        "num_classes": header["num_classes"],
        "dtype": header["dtype"],
    }


def cache_id(header: Mapping[str, Any]) -> str:
    """A short id of a cache's binding: two files with the same id hold logits for the same inputs and weights."""
    return hashlib.sha256(json.dumps(binding(header), sort_keys=True).encode()).hexdigest()[:16]


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse a cache file's header (no check of its logits; see :class:`TeacherLogitCache`).

    Raises:
        TeacherCacheNotFoundError: if ``path`` is not a file (also a ``FileNotFoundError``).
        StaleTeacherCacheError: if the file is not a cache, its header is damaged, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherCacheNotFoundError(
            f"Expected a teacher-logit cache at {path}, but there is no such file. Build it with "
            "`cmkd-teacher-cache build ... --output " + str(path) + "`."
        )
    with open(path, "rb") as file:
        head = file.read(HEADER_BYTES)
    if len(head) < 16 or head[:8] != MAGIC:
        raise StaleTeacherCacheError(
            f"Expected {path} to be a teacher-logit cache (starting with {MAGIC!r}), but it starts with {head[:8]!r}."
        )
    (length,) = struct.unpack("<Q", head[8:16])
    if length > HEADER_BYTES - 16 or len(head) < 16 + length:
        raise StaleTeacherCacheError(f"Expected {path} to hold a complete header, but the file is truncated in it.")
    trailer = head[HEADER_BYTES - TRAILER_BYTES :]
    if len(head) == HEADER_BYTES and trailer.startswith(TRAILER_TAG):
        recorded = trailer[len(TRAILER_TAG) :].decode("ascii", "replace")
        if hashlib.sha256(head[: HEADER_BYTES - TRAILER_BYTES]).hexdigest() != recorded:
            raise CorruptTeacherCacheError(
                f"Expected the header of the teacher-logit cache {path} to hash to its recorded SHA-256, but it does "
                f"not: it was damaged (e.g. the machine stopped while it was rewritten). {rebuild_hint(path)}"
            )
    try:
        header = json.loads(head[16 : 16 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StaleTeacherCacheError(
            f"Expected {path} to hold a JSON header, but reading it failed: {err}. {rebuild_hint(path)}"
        ) from err
    if header.get("version") != FORMAT_VERSION:
        raise StaleTeacherCacheError(
            f"Expected a teacher-logit cache of format version {FORMAT_VERSION}, but {path} has version "
            f"{header.get('version')!r}: rebuild it with this version of cmkd-lightning."
        )
    return header


def encode_header(header: Mapping[str, Any]) -> bytes:
    """The ``HEADER_BYTES`` bytes of the header area: magic, length, JSON, space padding, the trailer checksum."""
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    room = HEADER_BYTES - 16 - TRAILER_BYTES
    if len(blob) > room:
        raise InvalidArgumentError(f"Expected the cache header to fit in {room} bytes, but it has {len(blob)}.")
    body = MAGIC + struct.pack("<Q", len(blob)) + blob.ljust(room, b" ")
    return body + TRAILER_TAG + hashlib.sha256(body).hexdigest().encode("ascii")


def write_header(target: str | os.PathLike[str] | int, header: Mapping[str, Any]) -> None:
    """Write ``header`` into the header area of a cache file (a path, or a file descriptor open for writing).

    One page-aligned write of the whole ``HEADER_BYTES`` area, then ``fsync``: the header is replaced in place (the
    file's other bytes are untouched) and is on disk when this returns. A write torn by a crash fails the header's
    own checksum and is refused when read (``docs/TEACHER_CACHE.md``, "Crash safety").
    """
    data = encode_header(header)
    if isinstance(target, int):
        if os.pwrite(target, data, 0) != len(data):
            raise TeacherCacheWriteError(
                f"Expected to write the {len(data)}-byte cache header in one call, but the write was short."
            )
        os.fsync(target)
        return
    with open(target, "r+b") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def data_bytes(header: Mapping[str, Any]) -> int:
    """Size in bytes of the logits array a header describes."""
    return int(np.prod(header["shape"])) * DTYPES[header["dtype"]].itemsize


def logits_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a cache file's logits: every byte from ``HEADER_BYTES`` to the end, read in 16 MiB steps."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        file.seek(HEADER_BYTES)
        while count := file.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def file_key(path: str | os.PathLike[str]) -> tuple[int, int, int, int]:
    """``(device, inode, size, mtime_ns)``: what a verified file's memo is keyed on (any rewrite changes it)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remember_verified(path: str | os.PathLike[str], sha256: str) -> None:
    """Record that ``path``, as it is now, holds logits with ``sha256`` (the builder, which just hashed them)."""
    _VERIFIED[file_key(path)] = sha256


def _differences(expected: Mapping[str, Any], got: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(expected) | set(got)):
        a, b = expected.get(key), got.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache has {b!r}, expected {a!r}")
    return out


class TeacherLogitCache:
    """A built teacher-logit cache, memory-mapped on first lookup (per process: each DDP rank maps the file).

    Opening checks the header, that the build completed, that the file has the size the header describes, and that
    the logits hash to the SHA-256 the build recorded (once per file and process: the result is remembered for the
    file's device, inode, size and modification time; a cache built before checksums existed is used with a
    one-time warning to rebuild it). The ``check_*`` methods refuse a cache bound to other weights, data, transform,
    split or class count. Lookups read only the requested rows from the page cache (no copy of the file into
    memory). Pickling (DataLoader workers, DDP spawn) carries the path and header, never the mapping, and the
    unpickled copy does not hash the file again.

    Args:
        path: the file written by ``cmkd-teacher-cache build``.

    Raises:
        TeacherCacheNotFoundError: if ``path`` does not exist (also a ``FileNotFoundError``).
        StaleTeacherCacheError: if the file is not a cache, its build is unfinished, or it is truncated.
        CorruptTeacherCacheError: if its logits or header do not hash to what was recorded.

    Example:
        >>> import tempfile
        >>> from cmkd_lightning.teacher_cache import build_cache
        >>> path = Path(tempfile.mkdtemp()) / "cache.bin"
        >>> images = np.zeros((2, 32, 32, 3), np.uint8)
        >>> teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))
        >>> cache = build_cache(teacher, images, [0, 1], path, progress=False)
        >>> cache.lookup(torch.tensor([1]), torch.tensor([80])).shape
        torch.Size([1, 5])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.header = read_header(self.path)
        header = self.header
        if not header.get("complete", False):
            raise StaleTeacherCacheError(
                f"Expected a completely built teacher-logit cache, but {self.path} holds "
                f"{header.get('images_done', 0)} of {header['shape'][0]} images: the build was interrupted. Run the "
                "same `cmkd-teacher-cache build` command again to resume it."
            )
        expected = HEADER_BYTES + data_bytes(header)
        size = self.path.stat().st_size
        if size != expected:
            raise StaleTeacherCacheError(
                f"Expected {self.path} to be {expected} bytes (header + {tuple(header['shape'])} {header['dtype']}), "
                f"but it is {size} bytes: the file is truncated or damaged. Rebuild it with `cmkd-teacher-cache build "
                "--overwrite`."
            )
        self._array: np.memmap | None = None
        self.verify()

    def verify(self, force: bool = False) -> None:
        """Hash the logits and refuse the cache unless they match the SHA-256 recorded by its build.

        Skipped when this process already verified the file in its current state (same device, inode, size and
        modification time), unless ``force``. A cache without a recorded checksum (built by an earlier version)
        is accepted with a warning, once per file and process.

        Raises:
            CorruptTeacherCacheError: if the logits were changed after the build.
        """
        want = self.header.get("logits_sha256")
        if want is None:
            name = str(self.path.resolve())
            if name not in _WARNED_UNCHECKED:
                _WARNED_UNCHECKED.add(name)
                warnings.warn(
                    f"The teacher-logit cache {self.path} has no checksum of its logits (it was built by an earlier "
                    "version of cmkd-lightning), so damage to them cannot be detected. "
                    f"{rebuild_hint(self.path, self.header)}",
                    UserWarning,
                    stacklevel=3,
                )
            return
        key = file_key(self.path)
        if not force and _VERIFIED.get(key) == want:
            return
        got = logits_sha256(self.path)
        if got != want:
            raise CorruptTeacherCacheError(
                f"Expected the logits in the teacher-logit cache {self.path} to hash to the SHA-256 its build "
                f"recorded ({want[:12]}...), but they hash to {got[:12]}...: the file was changed or damaged after "
                f"the build. {rebuild_hint(self.path, self.header)}"
            )
        _VERIFIED[key] = want

    # ------------------------------------------------------------------ properties
    @property
    def num_images(self) -> int:
        """Number of images of the split."""
        return int(self.header["shape"][0])

    @property
    def num_views(self) -> int:
        """Number of views per image (162)."""
        return int(self.header["shape"][1])

    @property
    def num_classes(self) -> int:
        """Number of classes (the teacher's outputs)."""
        return int(self.header["shape"][2])

    @property
    def id(self) -> str:
        """Short id of what the cache is bound to (see :func:`cache_id`)."""
        return cache_id(self.header)

    @property
    def array(self) -> np.memmap:
        """The ``(num_images, num_views, num_classes)`` logits, memory-mapped read-only on first use."""
        if self._array is None:
            self._array = np.memmap(
                self.path, dtype=DTYPES[self.header["dtype"]], mode="r", offset=HEADER_BYTES,
                shape=tuple(self.header["shape"]),
            )  # fmt: skip
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # each process maps the file itself
        return state

    def __repr__(self) -> str:
        h = self.header
        return (
            f"TeacherLogitCache({str(self.path)!r}, teacher={h['teacher'].get('name')!r}, "
            f"split={h['dataset']['split']!r}, shape={tuple(h['shape'])}, dtype={h['dtype']!r})"
        )

    # ------------------------------------------------------------------ checks
    def check_teacher(self, teacher: nn.Module) -> None:
        """Refuse the cache unless it was built from exactly ``teacher``'s weights and class count."""
        got = state_dict_sha256(teacher)
        want = self.header["teacher"]["weights_sha256"]
        if got != want:
            raise StaleTeacherCacheError(
                f"Expected the teacher-logit cache {self.path} to hold this teacher's logits, but it was built from "
                f"other weights (weights sha256 {want[:12]}..., this teacher {got[:12]}...; built from "
                f"{self.header['teacher'].get('checkpoint')!r}). Rebuild it for this teacher with "
                "`cmkd-teacher-cache build`."
            )

    def check_classes(self, num_classes: int) -> None:
        """Refuse the cache unless it holds ``num_classes`` logits per view."""
        if self.num_classes != num_classes or self.header["num_classes"] != num_classes:
            raise StaleTeacherCacheError(
                f"Expected the teacher-logit cache {self.path} to hold {num_classes} logits per view "
                f"(`num_classes`), but it holds {self.num_classes}."
            )

    def check_data(
        self, *, dataset: str, split: str, images: np.ndarray, targets: Sequence[int], transform: Mapping[str, Any]
    ) -> None:
        """Refuse the cache unless it was built on exactly this split's images and labels with ``transform``."""
        h = self.header
        if h["dataset"]["name"] != dataset or h["dataset"]["split"] != split:
            raise StaleTeacherCacheError(
                f"Expected a teacher-logit cache of the {dataset} {split!r} split, but {self.path} holds the "
                f"{h['dataset']['name']} {h['dataset']['split']!r} split."
            )
        diffs = _differences(dict(transform), h["transform"])
        if diffs:
            raise StaleTeacherCacheError(
                f"Expected the teacher-logit cache {self.path} to be built with this data module's transform, but "
                f"they differ ({'; '.join(diffs)}): its logits are for other inputs. Rebuild the cache."
            )
        if len(images) != self.num_images:
            raise StaleTeacherCacheError(
                f"Expected the teacher-logit cache {self.path} to hold {len(images)} images (the {split!r} split), "
                f"but it holds {self.num_images}."
            )
        got = data_sha256(images, targets)
        if got != h["dataset"]["data_sha256"]:
            raise StaleTeacherCacheError(
                f"Expected the teacher-logit cache {self.path} to be built on these {split!r} images and labels, but "
                f"their hash differs (cache {h['dataset']['data_sha256'][:12]}..., data {got[:12]}...): other "
                "files or another synthetic set. Rebuild the cache for this data."
            )

    def check_datamodule(self, datamodule: Any) -> None:
        """Refuse a data module that was not given this same cache (its batches would carry no or other indices).

        ``None`` (dataloaders passed to the Trainer directly) is accepted: the step checks each batch's layout.
        """
        if datamodule is None:
            return
        theirs = getattr(datamodule, "logit_cache", None)
        if theirs is None:
            raise StaleTeacherCacheError(
                f"Expected the data module to be given the same `teacher_cache` as the module ({self.path}), so that "
                f"its training batches carry sample and view indices, but {type(datamodule).__name__} has none. "
                "Set `teacher_cache` on both (e.g. data.init_args.teacher_cache and model.init_args.teacher_cache)."
            )
        if theirs.id != self.id:
            raise StaleTeacherCacheError(
                f"Expected the data module and the module to use the same teacher-logit cache, but the data module's "
                f"{theirs.path} (id {theirs.id}) and the module's {self.path} (id {self.id}) are bound to different "
                "teachers, data, transforms or dtypes."
            )

    # ------------------------------------------------------------------ lookup
    def lookup(self, sample_index: Tensor, view_index: Tensor) -> Tensor:
        """Cached teacher logits of ``(sample, view)`` pairs, on the CPU in the stored dtype.

        Args:
            sample_index: ``(N,)`` integer image indices in ``[0, num_images)`` (CPU tensor).
            view_index: ``(N,)`` integer view indices in ``[0, num_views)`` (CPU tensor).

        Returns:
            ``(N, num_classes)`` logits (``float16`` or ``float32`` as stored).
        """
        for name, index, bound in (
            ("sample_index", sample_index, self.num_images),
            ("view_index", view_index, self.num_views),
        ):
            if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.ndim != 1:
                got = f"{index.dtype} tensor of shape {tuple(index.shape)}" if isinstance(index, Tensor) else index
                raise InvalidArgumentError(f"Expected `{name}` to be a 1-d integer tensor, but got {got}.")
            if index.device.type != "cpu":
                raise InvalidArgumentError(
                    f"Expected `{name}` on the CPU (the cache is read on the host before the batch moves to the "
                    f"device), but got a tensor on {index.device}."
                )
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bound):
                raise InvalidArgumentError(
                    f"Expected `{name}` in [0, {bound}) for the cache {self.path}, but got values in "
                    f"[{int(index.min())}, {int(index.max())}]."
                )
        if sample_index.shape != view_index.shape:
            raise InvalidArgumentError(
                f"Expected one view index per sample index, but got shapes {tuple(sample_index.shape)} and "
                f"{tuple(view_index.shape)}."
            )
        rows = self.array[sample_index.numpy(), view_index.numpy()]
        return torch.from_numpy(np.ascontiguousarray(rows))

    def batch_logits(self, batch: Sequence[Any], like: Tensor) -> Tensor:
        """Teacher logits of a training batch ``(images, targets, sample_index, view_index[, logits])``.

        A batch that already carries the logits (attached on the host by :meth:`attach` before the transfer) gives
        them as they are; otherwise they are looked up here and moved to ``like``'s device. Indices already on an
        accelerator are copied to the host first (one sync; the Trainer path attaches on the host and has none).
        """
        if isinstance(batch, (list, tuple)) and len(batch) == 5:
            return batch[4]
        if not isinstance(batch, (list, tuple)) or len(batch) != 4:
            got = f"{len(batch)} items" if isinstance(batch, (list, tuple)) else type(batch).__name__
            raise InvalidArgumentError(
                "Expected training batches (images, targets, sample_index, view_index) from a data module given "
                f"the same `teacher_cache` ({self.path}), but got a batch of {got}."
            )
        return self.lookup(batch[2].cpu(), batch[3].cpu()).to(like.device, non_blocking=True)

    def attach(self, batch: Any) -> Any:
        """Append the cached logits to a host-side ``(images, targets, sample_index, view_index)`` batch."""
        if isinstance(batch, (list, tuple)) and len(batch) == 4 and batch[2].device.type == "cpu":
            logits = self.lookup(batch[2], batch[3])
            return [*batch, logits]
        return batch


def open_for_module(path: str | os.PathLike[str], teacher: nn.Module | None, num_classes: int) -> TeacherLogitCache:
    """Open a cache for :class:`~cmkd_lightning.DistillationModule`: checked against its teacher and class count.

    Raises:
        ValueError: if there is no teacher to check the cache against (validation also runs it).
        StaleTeacherCacheError: if the cache belongs to other weights or another class count, or is unfinished.
    """
    if teacher is None:
        raise InvalidArgumentError(
            f"Expected a `teacher` with `teacher_cache` ({path}): the cache is checked against its weights and "
            "validation runs it, but got teacher=None."
        )
    cache = TeacherLogitCache(path)
    cache.check_classes(num_classes)
    cache.check_teacher(teacher)
    return cache


__all__ = [
    "open_for_module",
    "DTYPES",
    "HEADER_BYTES",
    "MAGIC",
    "CorruptTeacherCacheError",
    "StaleTeacherCacheError",
    "TeacherCacheNotFoundError",
    "TeacherLogitCache",
    "cache_id",
    "data_sha256",
    "logits_sha256",
    "read_header",
    "rebuild_hint",
    "state_dict_sha256",
    "write_header",
]
