"""CIFAR-10 and CIFAR-10-C: the official python files read safely, with the CIFAR recipe's augmentation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from cmkd_lightning._validation import check_bool, check_int, check_optional_bool, check_path
from datamodules._io import file_md5, load_data_pickle, loader_kwargs
from datamodules.cifar100 import _READ_ERRORS
from datamodules.cifar100c import CIFAR100CDataset

#: Per-channel mean and std of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_FOLDER = "cifar-10-batches-py"
_TRAIN = tuple(name for name, _ in CIFAR10.train_list)
_TEST = tuple(name for name, _ in CIFAR10.test_list)
_FILES = (*_TRAIN, *_TEST, CIFAR10.meta["filename"])
_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
#: MD5 sums of the official files, as torchvision lists them.
_MD5 = {**dict(CIFAR10.train_list), **dict(CIFAR10.test_list), CIFAR10.meta["filename"]: CIFAR10.meta["md5"]}
_WARNED: set[str] = set()


class MalformedCIFAR10Error(ValueError):
    """A CIFAR-10 file exists but does not hold what the official archive holds."""


class CIFAR10Dataset(CIFAR10):
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

    def __init__(
        self, root: str | Path, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        root = check_path(root, "root")
        missing = [name for name in _FILES if not (root / _FOLDER / name).is_file()]
        if missing and not download:
            raise FileNotFoundError(
                f"CIFAR-10 not found: expected the folder {root / _FOLDER} holding {', '.join(_FILES)} (the extracted "
                f"cifar-10-python.tar.gz from {_SOURCE}), but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing. Pass `download=True` to download it into {root}, "
                f"or place the extracted `{_FOLDER}` folder there."
            )
        VisionDataset.__init__(self, str(root), transform=transform)
        self.train = train
        if download and missing:
            try:
                self.download()
            except (URLError, OSError) as err:
                reason = getattr(err, "reason", None) or err
                raise ConnectionError(
                    f"Could not download CIFAR-10 from {self.url} ({type(err).__name__}: {reason})."
                    f" Without network, fetch {self.filename} (md5 {self.tgz_md5}) from {_SOURCE} on another machine, "
                    f"extract it into {root} and run with `download=False`."
                ) from err
        data, targets = [], []
        for name in _TRAIN if train else _TEST:
            path = root / _FOLDER / name
            entry = self._read(path, "a pickled dict with keys 'data' (uint8, shape (N, 3072)) and 'labels'")
            try:
                data.append(np.asarray(entry["data"]))
                targets.extend(entry["labels"])
            except _READ_ERRORS as err:
                raise MalformedCIFAR10Error(
                    f"Expected {path} to be a pickled dict with keys 'data' and 'labels' as in the official archive, "
                    f"but reading it failed with {type(err).__name__}: {err}."
                ) from err
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1)) if data else np.empty(0)
        self.targets = list(targets)
        meta_path = root / _FOLDER / self.meta["filename"]
        meta: Any = self._read(meta_path, "a pickled dict with key 'label_names'")
        try:
            self.classes = list(meta[self.meta["key"]])
        except _READ_ERRORS as err:
            raise MalformedCIFAR10Error(f"Expected {meta_path} to hold 'label_names', but got {err!r}.") from err
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._validate(root / _FOLDER)

    def _read(self, path: Path, what: str) -> Any:
        expected = _MD5.get(path.name)
        if expected is not None and str(path) not in _WARNED:
            got = file_md5(path)
            if got != expected:
                _WARNED.add(str(path))
                warnings.warn(
                    f"{path} is not the official CIFAR-10 file (md5 {got}, expected {expected}); it is read with "
                    "the restricted data unpickler (no code runs) and checked for shape and labels.",
                    stacklevel=3,
                )
        try:
            return load_data_pickle(path)
        except _READ_ERRORS as err:
            raise MalformedCIFAR10Error(
                f"Expected {path} to be {what} as in the official archive, but reading it failed with "
                f"{type(err).__name__}: {err}. Delete the folder and pass `download=True` to fetch it again."
            ) from err

    def _validate(self, folder: Path) -> None:
        data, targets = self.data, np.asarray(self.targets)
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[0] < 1:
            raise MalformedCIFAR10Error(
                f"Expected the 'data' under {folder} to be a non-empty uint8 array of shape (N, 3072), but got "
                f"{data.dtype} of shape {data.shape}."
            )
        if targets.shape != (data.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
            raise MalformedCIFAR10Error(
                f"Expected {data.shape[0]} integer 'labels' under {folder} (one per image), but got {targets.dtype} "
                f"labels of shape {targets.shape}."
            )
        if targets.min() < 0 or targets.max() >= 10:
            raise MalformedCIFAR10Error(
                f"Expected the 'labels' under {folder} to lie in [0, 10), but got values in "
                f"[{targets.min()}, {targets.max()}]."
            )
        if len(self.classes) != 10:
            raise MalformedCIFAR10Error(
                f"Expected {folder / 'batches.meta'} to list 10 'label_names', but got {len(self.classes)}."
            )

    def _check_integrity(self) -> bool:
        """True when every file exists (torchvision compares md5 sums here)."""
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in _FILES)


class CIFAR10CDataset(CIFAR100CDataset):
    """One corruption at one severity of CIFAR-10-C (same layout as CIFAR-100-C, labels in ``[0, 10)``).

    CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019; Zenodo record 2535967) holds ``<corruption>.npy`` (uint8,
    ``(50000, 32, 32, 3)``: severities 1..5 x 10,000 test images) and ``labels.npy``, like CIFAR-100-C; see
    :class:`~datamodules.CIFAR100CDataset` for the arguments.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, transform: Callable | None = None) -> None:
        super().__init__(root, corruption, severity, transform)
        if self.labels.max() >= 10:
            raise ValueError(
                f"Expected the labels in {self.root / 'labels.npy'} to lie in [0, 10) (CIFAR-10-C), but got values "
                f"up to {self.labels.max()}."
            )


def cifar10_train_transform() -> Callable:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize(CIFAR-10 mean/std)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


def cifar10_test_transform() -> Callable:
    """ToTensor + Normalize(CIFAR-10 mean/std)."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


class CIFAR10DataModule(LightningDataModule):
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
    ) -> None:
        super().__init__()
        self.data_dir = check_path(data_dir, "data_dir")
        self.download = check_bool(download, "download")
        self.synthetic = check_bool(synthetic, "synthetic")
        self.synthetic_size = check_int(synthetic_size, "synthetic_size", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.num_workers = check_int(num_workers, "num_workers", minimum=0)
        self.pin_memory = check_optional_bool(pin_memory, "pin_memory")
        self.augment = check_bool(augment, "augment")
        self.save_hyperparameters()
        self.num_classes: int = 10
        self.image_shape: tuple[int, int, int] = (3, 32, 32)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download the archive when ``download`` is True and the files are missing (rank 0 only)."""
        if self.download and not self.synthetic:
            CIFAR10Dataset(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the training batches for ``fit`` and the test batch for every stage."""
        train_tf = cifar10_train_transform() if self.augment else cifar10_test_transform()
        if self.synthetic:
            from datamodules._synthetic import SyntheticImageDataset

            if stage in (None, "fit") and self.train_set is None:
                self.train_set = SyntheticImageDataset(self.synthetic_size, 10, 32, 32, transform=train_tf, seed=0)
            if self.test_set is None:
                self.test_set = SyntheticImageDataset(
                    self.synthetic_size, 10, 32, 32, transform=cifar10_test_transform(), seed=1
                )
            return
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CIFAR10Dataset(self.data_dir, train=True, transform=train_tf)
        if self.test_set is None:
            self.test_set = CIFAR10Dataset(self.data_dir, train=False, transform=cifar10_test_transform())

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("Call `setup()` before requesting a dataloader.")
        return DataLoader(dataset, shuffle=shuffle, **loader_kwargs(self.batch_size, self.num_workers, self.pin_memory))

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The official test split, in fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The official test split, in fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The official test split, in fixed order."""
        return self._loader(self.test_set, shuffle=False)
