"""Writers of small fake datasets in the exact on-disk formats of the real ones.

Every writer takes a directory, creates what the matching datamodule expects below it, fills it with
seeded random content and returns the path to pass as ``data_dir``. Use them from any test::

    from tests._fakes import write_fake_cifar100
    data_dir = write_fake_cifar100(tmp_path, n_train=16, n_test=8)
    dm = CIFAR100DataModule(data_dir, num_workers=0)

Formats:

- CIFAR-100: ``<root>/cifar-100-python/{train,test,meta}``, pickles written like the official Python 2
  archive (dict keys and strings are Python 2 ``str``, so ``pickle.load(f, encoding="bytes")`` gives
  ``b'data'`` keys and ``encoding="latin1"`` — torchvision's choice — gives ``'data'``). ``train``/``test``:
  ``data`` uint8 ``(N, 3072)`` (1024 red, 1024 green, 1024 blue values per row), ``fine_labels`` and
  ``coarse_labels`` (lists of N ints), ``filenames`` (N names), ``batch_label``. ``meta``:
  ``fine_label_names`` (100 names), ``coarse_label_names`` (20 names).
- ImageNet: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (RGB JPEG files).
- CIFAR-100-C: ``<root>/<corruption>.npy`` uint8 ``(5 * n, 32, 32, 3)`` (severity ``s`` in rows
  ``(s - 1) * n : s * n``) and ``<root>/labels.npy`` ``(5 * n,)`` (the same ``n`` labels repeated 5 times,
  as in the release).
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class _Py2Pickler(pickle._Pickler):
    """Pickle protocol 2 that writes ``bytes`` as Python 2 ``str`` (opcodes SHORT_BINSTRING / BINSTRING).

    This is how the official CIFAR archives were written; Python 3 would write ``bytes`` as a call to
    ``_codecs.encode`` instead, which loads as ``bytes`` whatever the ``encoding`` argument.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle_dumps(obj: Any) -> bytes:
    """Serialise ``obj`` like Python 2's ``cPickle.dump(obj, f, 2)``, ``bytes`` becoming Python 2 ``str``."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_fake_cifar100(root: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` with random images and labels in ``[0, 100)``.

    Args:
        root: directory to write into (created if needed).
        n_train: images in ``train``.
        n_test: images in ``test``.
        seed: numpy seed of the content.

    Returns:
        ``root`` (the ``data_dir`` of :class:`~datamodules.CIFAR100DataModule`).
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n, label in (("train", n_train, b"training batch 1 of 1"), ("test", n_test, b"testing batch 1 of 1")):
        fine = rng.integers(0, 100, size=n)
        entry = {
            b"filenames": [f"fake_{name}_{i}.png".encode() for i in range(n)],
            b"batch_label": label,
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) // 5 for v in fine],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(py2_pickle_dumps(entry))
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(py2_pickle_dumps(meta))
    return root


def write_fake_imagenet(
    root: str | Path, num_classes: int = 3, per_class: int = 2, size: int = 40, seed: int = 0
) -> Path:
    """Write ``<root>/{train,val}/n0000000<k>/<i>.JPEG``: ``per_class`` random RGB JPEGs per class and split.

    Images are ``size`` × ``(size + 8)`` (height × width), so resizing the shorter edge matters.

    Args:
        root: directory to write into (created if needed).
        num_classes: class folders per split, named like WordNet ids (``n00000000``, ``n00000001``, ...).
        per_class: images per class folder.
        size: image height in pixels.
        seed: numpy seed of the content.

    Returns:
        ``root`` (the ``data_dir`` of :class:`~datamodules.ImageNetDataModule`).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for k in range(num_classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{k}_{i}.JPEG", format="JPEG")
    return root


def write_fake_cifar100c(
    root: str | Path,
    corruptions: Sequence[str] = ("gaussian_noise", "fog"),
    n_per_severity: int = 4,
    seed: int = 0,
) -> Path:
    """Write ``<root>/<corruption>.npy`` (uint8, ``(5 * n_per_severity, 32, 32, 3)``) and ``<root>/labels.npy``.

    Args:
        root: directory to write into (created if needed).
        corruptions: corruption names, one file each.
        n_per_severity: images per severity block.
        seed: numpy seed of the content.

    Returns:
        ``root`` (the ``data_dir`` of :class:`~datamodules.CIFAR100CDataModule`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, size=n_per_severity).astype(np.uint8)
    np.save(root / "labels.npy", np.tile(labels, 5))
    for corruption in corruptions:
        images = rng.integers(0, 256, size=(5 * n_per_severity, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{corruption}.npy", images)
    return root
