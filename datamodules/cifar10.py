"""CIFAR-10 and CIFAR-10-C: the official python files read safely, with the CIFAR recipe's augmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torchvision.datasets import CIFAR10

from cmkd_lightning.errors import DataError, InvalidArgumentError
from datamodules._cifar import _CIFARDataModule, _SafeCIFARDataset, test_transform, train_transform
from datamodules.cifar100c import CIFAR100CDataset

#: Per-channel mean and std of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class MalformedCIFAR10Error(DataError):
    """A CIFAR-10 file exists but does not hold what the official archive holds."""


class CIFAR10Dataset(_SafeCIFARDataset, CIFAR10):
    """torchvision's :class:`~torchvision.datasets.CIFAR10` read with the same safety as :class:`CIFAR100Dataset`.

    Files are read with the restricted data unpickler (no code in a data file runs), a file whose md5 differs
    from the official one is named in a warning, and the content is validated (``data`` of shape ``(N, 3072)``
    uint8, ``N`` labels in ``[0, 10)``, 10 class names). Downloading is torchvision's (md5-checked archive).

    Expected layout: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Args:
        root: directory that holds (or will hold) the ``cifar-10-batches-py`` folder.
        train: the five training batches if True, else the test batch.
        transform: transform applied to each PIL image.
        download: download and extract the archive into ``root`` if files are missing.

    Raises:
        FileNotFoundError: if files are missing and ``download`` is False.
        ConnectionError: if the archive is needed and cannot be fetched.
        ValueError: if a file cannot be read, refers to code, or does not hold the expected content.
    """

    _NAME = "CIFAR-10"
    _NUM_CLASSES = 10
    _LABEL_KEYS = ("labels",)
    _ERROR = MalformedCIFAR10Error
    _MESSAGES = {
        "unreadable": "Expected {path} to be a pickled dict with keys 'data' (uint8, shape (N, 3072)) and 'labels' as "
        "in the official archive, but reading it failed with {kind}: {err}. Delete the folder and pass "
        "`download=True` to fetch it again.",
        "fields": "Expected {path} to be a pickled dict with keys 'data' and 'labels' as in the official archive, "
        "but reading it failed with {kind}: {err}.",
        "meta_unreadable": "Expected {path} to be a pickled dict with key 'label_names' as in the official archive, "
        "but reading it failed with {kind}: {err}. Delete the folder and pass `download=True` to fetch it again.",
        "meta_key": "Expected {path} to hold 'label_names', but got {err!r}.",
        "data": "Expected the 'data' under {folder} to be a non-empty uint8 array of shape (N, 3072), but got "
        "{dtype} of shape {shape}.",
        "labels": "Expected {n} integer 'labels' under {folder} (one per image), but got {dtype} labels of shape "
        "{shape}.",
        "range": "Expected the 'labels' under {folder} to lie in [0, 10), but got values in [{lo}, {hi}].",
        "classes": "Expected {meta} to list 10 'label_names', but got {count}.",
    }


class CIFAR10CDataset(CIFAR100CDataset):
    """One corruption at one severity of CIFAR-10-C (same layout as CIFAR-100-C, labels in ``[0, 10)``).

    CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019; Zenodo record 2535967) holds ``<corruption>.npy`` (uint8,
    ``(50000, 32, 32, 3)``: severities 1..5 x 10,000 test images) and ``labels.npy``, like CIFAR-100-C; see
    :class:`~datamodules.CIFAR100CDataset` for the arguments.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, transform: Callable | None = None) -> None:
        super().__init__(root, corruption, severity, transform)
        if self.labels.max() >= 10:
            raise InvalidArgumentError(
                f"Expected the labels in {self.root / 'labels.npy'} to lie in [0, 10) (CIFAR-10-C), but got values "
                f"up to {self.labels.max()}."
            )


def cifar10_train_transform() -> Callable:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize(CIFAR-10 mean/std)."""
    return train_transform(CIFAR10_MEAN, CIFAR10_STD)


def cifar10_test_transform() -> Callable:
    """ToTensor + Normalize(CIFAR-10 mean/std)."""
    return test_transform(CIFAR10_MEAN, CIFAR10_STD)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (Krizhevsky, 2009) with the CIFAR recipe: RandomCrop(32, 4) + flip, validation on the test split.

    The paper's motivation experiments (Figs. 1, 2, 3, 5) distil a ResNet14 on CIFAR-10 as on CIFAR-100; this
    module mirrors :class:`~datamodules.CIFAR100DataModule` (same arguments, ``synthetic`` included) with the
    CIFAR-10 files and normalisation (mean ``(0.4914, 0.4822, 0.4465)``, std ``(0.2470, 0.2435, 0.2616)``).

    Expected layout: ``<data_dir>/cifar-10-batches-py/`` (the extracted ``cifar-10-python.tar.gz``).

    Args:
        data_dir: directory holding the ``cifar-10-batches-py`` folder.
        download: download the archive if the files are missing.
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        augment: apply the training augmentation.
        synthetic: serve deterministic random 32x32 images through the real transforms instead of files.
        synthetic_size: number of synthetic samples per split.

    Attributes:
        num_classes: 10.
        image_shape: ``(3, 32, 32)``.

    Example:
        >>> dm = CIFAR10DataModule(synthetic=True, synthetic_size=4, num_workers=0)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.num_classes
        ((4, 3, 32, 32), 10)
    """

    _DATASET = CIFAR10Dataset
    _MEAN = CIFAR10_MEAN
    _STD = CIFAR10_STD
