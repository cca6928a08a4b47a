"""The teacher-logit cache file: header, fingerprints, validation and memory-mapped lookup.

Layout of one file (little-endian):

- bytes ``[0, 8)``: the magic ``b"CMKDTLC1"``; bytes ``[8, 16)``: the header length ``L`` (uint64);
- bytes ``[16, 16 + L)``: the header, UTF-8 JSON (teacher weights hash, data hash, transform, split, class count,
  dtype, shape, build progress); the header area is ``HEADER_BYTES`` long, so progress is rewritten in place;
- from ``HEADER_BYTES`` on: the logits, a C-ordered ``(num_images, num_views, num_classes)`` array of ``float16``
  or ``float32``; row ``[i, v]`` is the teacher's output on view ``v`` of image ``i``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

MAGIC = b"CMKDTLC1"
HEADER_BYTES = 4096
FORMAT_VERSION = 1
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


class StaleTeacherCacheError(ValueError):
    """A teacher-logit cache that does not belong to this teacher, data, transform or class count, or is unfinished."""


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
    """Read and parse a cache file's header (no check of its content; see :class:`TeacherLogitCache`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
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
    try:
        header = json.loads(head[16 : 16 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StaleTeacherCacheError(f"Expected {path} to hold a JSON header, but reading it failed: {err}.") from err
    if header.get("version") != FORMAT_VERSION:
        raise StaleTeacherCacheError(
            f"Expected a teacher-logit cache of format version {FORMAT_VERSION}, but {path} has version "
            f"{header.get('version')!r}: rebuild it with this version of cmkd-lightning."
        )
    return header


def write_header(path: str | os.PathLike[str], header: Mapping[str, Any]) -> None:
    """Write ``header`` into the header area of ``path`` (the file must exist), flushed to disk."""
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    if len(blob) > HEADER_BYTES - 16:
        raise ValueError(f"Expected the cache header to fit in {HEADER_BYTES - 16} bytes, but it has {len(blob)}.")
    with open(path, "r+b") as file:
        file.write(MAGIC + struct.pack("<Q", len(blob)) + blob.ljust(HEADER_BYTES - 16, b" "))
        file.flush()
        os.fsync(file.fileno())


def data_bytes(header: Mapping[str, Any]) -> int:
    """Size in bytes of the logits array a header describes."""
    return int(np.prod(header["shape"])) * DTYPES[header["dtype"]].itemsize


def create_file(path: str | os.PathLike[str], header: Mapping[str, Any]) -> None:
    """Create ``path`` with ``header`` and a zero-filled (sparse) logits area of the described size."""
    with open(path, "wb") as file:
        file.truncate(HEADER_BYTES + data_bytes(header))
    write_header(path, header)


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

    Opening checks the header, that the build completed and that the file has the size the header describes; the
    ``check_*`` methods refuse a cache bound to other weights, data, transform, split or class count. Lookups read
    only the requested rows from the page cache (no copy of the file into memory). Pickling (DataLoader workers,
    DDP spawn) carries the path and header, never the mapping.

    Args:
        path: the file written by ``cmkd-teacher-cache build``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        StaleTeacherCacheError: if the file is not a cache, its build is unfinished, or it is truncated.

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
                raise ValueError(f"Expected `{name}` to be a 1-d integer tensor, but got {got}.")
            if index.device.type != "cpu":
                raise ValueError(
                    f"Expected `{name}` on the CPU (the cache is read on the host before the batch moves to the "
                    f"device), but got a tensor on {index.device}."
                )
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bound):
                raise ValueError(
                    f"Expected `{name}` in [0, {bound}) for the cache {self.path}, but got values in "
                    f"[{int(index.min())}, {int(index.max())}]."
                )
        if sample_index.shape != view_index.shape:
            raise ValueError(
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
            raise ValueError(
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
        raise ValueError(
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
    "StaleTeacherCacheError",
    "TeacherLogitCache",
    "cache_id",
    "data_sha256",
    "read_header",
    "state_dict_sha256",
]
