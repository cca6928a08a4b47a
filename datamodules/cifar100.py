"""CIFAR-100 through torchvision, with the recipe's augmentation and normalisation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100

from cmkd_lightning.errors import DataError
from cmkd_lightning.utilities.validation import check_path
from datamodules._cifar import _CIFARDataModule, _SafeCIFARDataset, test_transform, train_transform
from datamodules._contrastive import check_negatives, with_contrast

#: Per-channel mean and std of the CIFAR-100 training images (the values of the reference repos).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


class MalformedCIFAR100Error(DataError):
    """A CIFAR-100 file exists but does not hold what the official archive holds."""


def cifar100_missing_message(root: Path, missing: list[str]) -> str:
    """The error message for an incomplete ``<root>/cifar-100-python`` folder."""
    return CIFAR100Dataset._missing_message(root, missing)


_UNREADABLE = (
    "Expected {path} to be a pickled dict with keys 'data' (uint8, shape (N, 3072)) and 'fine_labels' (N ints) as in "
    "the official archive, but reading it failed with {kind}: {err}. Delete the folder and pass `download=True` to "
    "fetch it again."
)
_META = (
    "Expected {path} to be a pickled dict with key 'fine_label_names' as in the official archive, but reading it "
    "failed with {kind}: {err}."
)


class CIFAR100Dataset(_SafeCIFARDataset, CIFAR100):
    """torchvision's :class:`~torchvision.datasets.CIFAR100` that trusts present files and validates them.

    torchvision refuses files whose md5 differs from the official archive's, which also rejects small
    test files written in the same format, and reads them with ``pickle.load``, which runs any code a crafted
    file holds. Here files are read with a restricted unpickler (dicts, lists, strings, bytes, numbers and numpy
    arrays only; anything else is refused before it runs), a file whose md5 differs from the official one is
    named in a warning, and the content is validated (``data`` of shape ``(N, 32, 32, 3)`` uint8 with
    ``N >= 1``, ``N`` fine labels in ``[0, 100)``, 100 class names). Downloading (``download=True``) is
    torchvision's, including the md5 check of the downloaded archive; without network the error says where to
    put the files by hand.

    Args:
        root: directory that holds (or will hold) the ``cifar-100-python`` folder.
        train: the official training split if True, else the official test split.
        transform: transform applied to each PIL image.
        download: download and extract the archive into ``root`` if the files are missing.

    Raises:
        FileNotFoundError: if files are missing and ``download`` is False.
        ConnectionError: if ``download`` is True, files are missing and the archive cannot be fetched.
        ValueError: if a file cannot be read, refers to code, or does not hold the expected content.
    """

    _NAME = "CIFAR-100"
    _NUM_CLASSES = 100
    _LABEL_KEYS = ("labels", "fine_labels")
    _HOLDING = "the files train, test and meta"
    _PLACED = "train, test and meta"
    _ERROR = MalformedCIFAR100Error
    _MESSAGES = {
        "unreadable": _UNREADABLE,
        "fields": _UNREADABLE,
        "meta_unreadable": _META,
        "meta_key": _META,
        "data": "Expected the 'data' of {file} to be a non-empty uint8 array of shape (N, 3072), but got {dtype} array "
        "of shape {shape}.",
        "labels": "Expected {file} to hold {n} integer 'fine_labels' (one per image), but got {dtype} labels of shape "
        "{shape}.",
        "range": "Expected the 'fine_labels' of {file} to lie in [0, 100), but got values in [{lo}, {hi}].",
        "classes": "Expected {meta} to list 100 'fine_label_names', but got {count}.",
    }


def cifar100_train_transform() -> Callable:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize(CIFAR-100 mean/std)."""
    return train_transform(CIFAR100_MEAN, CIFAR100_STD)


def cifar100_test_transform() -> Callable:
    """ToTensor + Normalize(CIFAR-100 mean/std)."""
    return test_transform(CIFAR100_MEAN, CIFAR100_STD)


def cifar100_images(
    data_dir: str | Path, train: bool = True, synthetic: bool = False, synthetic_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """A split's ``(N, 32, 32, 3)`` uint8 images and ``(N,)`` labels, as the data module reads them.

    The files (checked like :class:`CIFAR100Dataset`), or with ``synthetic=True`` the data module's synthetic set.
    The teacher-logit cache is built from and checked against exactly these arrays.
    """
    if synthetic:
        from datamodules._synthetic import SyntheticImageDataset

        ds = SyntheticImageDataset(synthetic_size, 100, 32, 32, seed=0 if train else 1)
        images = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
        return images, np.asarray(ds.targets, dtype=np.int64)
    ds = CIFAR100Dataset(data_dir, train=train)
    return np.ascontiguousarray(ds.data), np.asarray(ds.targets, dtype=np.int64)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (Krizhevsky, 2009) with the training recipe of the CMKD paper and its reference repos.

    Training images get RandomCrop(32, padding=4) and a random horizontal flip; all images are normalised with
    mean ``(0.5071, 0.4867, 0.4408)`` and std ``(0.2675, 0.2565, 0.2761)``. Validation and test both use the
    official 10,000-image test split, as the reference repos do.

    Expected layout: ``<data_dir>/cifar-100-python/{train,test,meta}`` (the extracted
    ``cifar-100-python.tar.gz``); ``download=True`` fetches it in ``prepare_data`` (rank 0 only).

    Args:
        data_dir: directory holding the ``cifar-100-python`` folder.
        download: download the archive if the files are missing.
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        augment: apply the training augmentation (turn off only for debugging).
        synthetic: serve deterministic random images of the real size through the real transforms instead of
            files (no download, no data directory); for smoke tests and device checks.
        synthetic_size: number of synthetic samples per split.
        teacher_cache: a teacher-logit cache of this training split (``cmkd-teacher-cache build``, see
            ``docs/TEACHER_CACHE.md``). Training batches then are ``(images, targets, sample_index, view_index)``:
            each image is drawn as one of the 162 enumerated crop/flip views (the same distribution as
            RandomCrop + flip) and its cached teacher logits are row ``[sample_index, view_index]``. The cache is
            refused at ``setup`` when it was built on other images, another split, another transform or class
            count. Give the same file to ``DistillationModule(teacher_cache=...)``.
        contrastive_negatives: for CRD (:class:`~cmkd_lightning.losses.CRDLoss`): training batches become
            ``(images, targets, sample_index, contrast_index)`` with ``K`` negatives of other classes per sample
            (:class:`~datamodules._contrastive.ContrastiveSampleDataset`; the reference's 16,384). Not with
            ``teacher_cache``.

    Attributes:
        num_classes: 100.
        image_shape: ``(3, 32, 32)``.
    """

    _DATASET = CIFAR100Dataset
    _MEAN = CIFAR100_MEAN
    _STD = CIFAR100_STD

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        augment: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 1024,
        teacher_cache: str | Path | None = None,
        contrastive_negatives: int | None = None,
    ) -> None:
        super().__init__(data_dir, download, batch_size, num_workers, pin_memory, augment, synthetic, synthetic_size)
        self.teacher_cache = None if teacher_cache is None else check_path(teacher_cache, "teacher_cache")
        self.contrastive_negatives = check_negatives(contrastive_negatives, teacher_cache)
        self.logit_cache: Any = None  # the opened TeacherLogitCache after setup("fit")

    def setup(self, stage: str | None = None) -> None:
        """Load the training split for ``fit`` (the cached-view set with ``teacher_cache``) and the test split."""
        if self.teacher_cache is not None and stage in (None, "fit") and self.train_set is None:
            self.train_set = self._cached_view_train_set()
        super().setup(stage)
        self.train_set = with_contrast(self.train_set, self.contrastive_negatives)

    def _cached_view_train_set(self) -> Dataset:
        """The training split as (image, target, sample_index, view_index), checked against the teacher cache."""
        from cmkd_lightning.teacher_cache import TeacherLogitCache, transform_spec
        from cmkd_lightning.teacher_cache.dataset import ViewIndexedDataset

        cache = TeacherLogitCache(self.teacher_cache)
        images, targets = cifar100_images(self.data_dir, True, self.synthetic, self.synthetic_size)
        transform = transform_spec(CIFAR100_MEAN, CIFAR100_STD)
        cache.check_data(dataset="cifar100", split="train", images=images, targets=targets, transform=transform)
        cache.check_classes(self.num_classes)
        self.logit_cache = cache
        return ViewIndexedDataset(images, targets, CIFAR100_MEAN, CIFAR100_STD, augment=self.augment)
