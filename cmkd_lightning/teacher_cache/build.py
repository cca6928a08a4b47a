r"""Build a teacher-logit cache: every training view of every image through the frozen teacher, once.

Command line (``cmkd-teacher-cache`` or ``python -m cmkd_lightning.teacher_cache``)::

    cmkd-teacher-cache build -c examples/configs/cifar100/_base.yaml \
        -c examples/configs/cifar100/kd/res32x4_res8x4.yaml --output caches/resnet32x4.tlc
    cmkd-teacher-cache build --teacher resnet32x4 --teacher-checkpoint ckpt.pth --data-dir data/cifar100 \
        --output caches/resnet32x4.tlc --dtype float32 --device cuda
    cmkd-teacher-cache info caches/resnet32x4.tlc

The build runs in ``torch.inference_mode`` at a large batch, shows its progress, and records its progress in the
file's header: run the same command again after an interruption and it resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmkd_lightning.teacher_cache.store import (
    DTYPES,
    FORMAT_VERSION,
    HEADER_BYTES,
    StaleTeacherCacheError,
    TeacherLogitCache,
    binding,
    create_file,
    data_sha256,
    read_header,
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
        StaleTeacherCacheError: if ``output`` holds a cache bound to something else and ``overwrite`` is False.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Expected `dtype` to be one of {tuple(DTYPES)}, but got {dtype!r}.")
    if split not in _SPLITS:
        raise ValueError(f"Expected `split` to be one of {_SPLITS}, but got {split!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1, but got {batch_size!r}.")
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) < 1:
        raise ValueError(
            f"Expected `images` to be uint8 of shape (N, 32, 32, 3) with N >= 1, but got {images.dtype} of shape "
            f"{images.shape}."
        )
    if len(targets) != len(images):
        raise ValueError(f"Expected one target per image ({len(images)}), but got {len(targets)}.")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    output = Path(output).expanduser()
    teacher = teacher.to(device).eval()
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
    start = 0
    if output.exists() and not overwrite:
        try:
            old = read_header(output)
            same = binding(old) == binding(header)
        except (StaleTeacherCacheError, KeyError, TypeError):
            old, same = None, False
        if not same:
            raise StaleTeacherCacheError(
                f"Expected {output} to be absent or a cache of this teacher, data, transform and dtype (to resume), "
                "but it holds another cache or another file. Pass `overwrite=True` (`--overwrite`) to replace it."
            )
        header = old
        if header["complete"]:
            return TeacherLogitCache(output)
        start = int(header["images_done"])
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        create_file(output, header)

    per_chunk = max(1, batch_size // NUM_VIEWS)
    logits = np.memmap(output, dtype=DTYPES[dtype], mode="r+", offset=HEADER_BYTES, shape=tuple(header["shape"]))
    bar = _Progress(len(images), start, progress)
    t0, last_save = time.perf_counter(), time.perf_counter()
    seconds_before = float(header.get("build_seconds", 0.0))
    with torch.inference_mode():
        for begin in range(start, len(images), per_chunk):
            end = min(begin + per_chunk, len(images))
            views = render_all_views(images[begin:end], mean, std).to(device)
            out = teacher(views).float().reshape(end - begin, NUM_VIEWS, num_classes)
            logits[begin:end] = out.to(torch.float16 if dtype == "float16" else torch.float32).cpu().numpy()
            if time.perf_counter() - last_save >= _SAVE_EVERY_S or end == len(images):
                logits.flush()  # the logits reach the file before the header counts them
                header["images_done"] = end
                header["build_seconds"] = seconds_before + time.perf_counter() - t0
                write_header(output, header)
                last_save = time.perf_counter()
            bar.update(end, final=end == len(images))
    del logits
    header["complete"] = True
    write_header(output, header)
    return TeacherLogitCache(output)


# ---------------------------------------------------------------------------------------------------------------- CLI


def _merged_configs(paths: Sequence[str]) -> dict[str, Any]:
    import yaml

    def merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in b.items():
            a[key] = merge(dict(a.get(key) or {}), value) if isinstance(value, Mapping) else value
        return a

    out: dict[str, Any] = {}
    for path in paths:
        with open(path, encoding="utf-8") as file:
            out = merge(out, yaml.safe_load(file) or {})
    return out


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cmkd-teacher-cache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or resume) a cache for a teacher and the CIFAR-100 training split")
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
    b.add_argument("--num-classes", type=int, default=None, help="default: 100")
    b.add_argument("--data-dir", help="directory holding cifar-100-python/ (default: data)")
    b.add_argument("--synthetic", action="store_true", default=None, help="the data module's synthetic images")
    b.add_argument("--synthetic-size", type=int, default=None)
    b.add_argument("--split", choices=_SPLITS, default="train")
    b.add_argument("--output", "-o", required=True, help="the cache file to write")
    b.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float16",
        help="float16: 1.62 GB for CIFAR-100's 50,000 images; float32: 3.24 GB (default: %(default)s)",
    )
    b.add_argument("--batch-size", type=int, default=1024, help="views per forward (default: %(default)s)")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing file bound to something else")
    b.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("info", help="print a cache's header")
    i.add_argument("path")
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
        raise SystemExit(
            f"cmkd-teacher-cache: expected a teacher model-zoo name (--teacher or model.init_args.teacher in a "
            f"config), but got {name!r}."
        )
    if ckpt is None:
        print(
            "cmkd-teacher-cache: no teacher checkpoint given: the teacher keeps its random initial weights.",
            file=sys.stderr,
        )
    synthetic = a.synthetic if a.synthetic is not None else bool(data.get("synthetic", False))
    size = a.synthetic_size or data.get("synthetic_size") or 1024
    data_dir = a.data_dir or data.get("data_dir") or "data"
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    teacher = create_model(name, num_classes=num_classes)
    if ckpt is not None:
        load_weights(teacher, ckpt, part=part)
    images, targets = cifar100_images(data_dir, train=a.split == "train", synthetic=synthetic, synthetic_size=size)
    return build_cache(
        teacher, images, targets, a.output, split=a.split, mean=CIFAR100_MEAN, std=CIFAR100_STD, dtype=a.dtype,
        batch_size=a.batch_size, device=a.device, teacher_name=name, checkpoint=ckpt, synthetic=synthetic,
        overwrite=a.overwrite, progress=not a.no_progress,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``cmkd-teacher-cache``."""
    a = _parse(argv)
    if a.command == "info":
        import json

        print(json.dumps(read_header(a.path), indent=1, sort_keys=True))
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


__all__ = ["build_cache", "main"]
