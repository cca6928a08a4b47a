"""What CIFAR-10 and CIFAR-100 share: reading the official python files safely, the recipe, the data module.

:mod:`datamodules.cifar10` and :mod:`datamodules.cifar100` subclass :class:`_SafeCIFARDataset` and
:class:`_CIFARDataModule` with their files, class count, normalisation and error wording.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.error import URLError

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from cmkd_lightning.errors import DataNotFoundError, DownloadError
from cmkd_lightning.utilities.validation import check_bool, check_int, check_optional_bool, check_path
from datamodules._io import SplitLoaders, file_md5, load_data_pickle

_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
#: Files already named in an "is not the official file" warning (one warning per path and process).
_WARNED: set[str] = set()
#: What reading a malformed or hostile data file can raise; each is turned into the dataset's clear error.
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    ImportError,
    UnicodeDecodeError,
)


def train_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize(mean, std)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def test_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """ToTensor + Normalize(mean, std)."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class _SafeCIFARDataset(CIFAR10):
    """A torchvision CIFAR dataset whose python files are read with the restricted unpickler and validated.

    Subclasses set the torchvision base (``CIFAR10`` or ``CIFAR100``, which name the files, md5 sums and archive)
    and the class attributes below; the error messages are the subclass's ``_MESSAGES`` templates, formatted
    with the path, the error (``kind``, ``err``) or the offending values.
    """

    #: "CIFAR-10" or "CIFAR-100", as errors and warnings name the dataset.
    _NAME: ClassVar[str]
    #: Number of classes: labels lie in ``[0, _NUM_CLASSES)`` and the meta file lists as many names.
    _NUM_CLASSES: ClassVar[int]
    #: Keys that may hold the labels in a split file, the first present one wins (the last is required).
    _LABEL_KEYS: ClassVar[tuple[str, ...]]
    #: How the "not found" error describes the folder's files; None lists them.
    _HOLDING: ClassVar[str | None] = None
    #: How the "could not download" error says which files must exist after extracting; None says nothing.
    _PLACED: ClassVar[str | None] = None
    #: The error raised for a file that does not hold what the official archive holds.
    _ERROR: ClassVar[type[ValueError]]
    #: Message templates: unreadable, fields, meta_unreadable, meta_key, data, labels, range, classes.
    _MESSAGES: ClassVar[dict[str, str]]

    def __init__(
        self, root: str | Path, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        root = check_path(root, "root")
        folder = root / self.base_folder
        missing = [name for name in self._files() if not (folder / name).is_file()]
        if missing and not download:
            raise DataNotFoundError(self._missing_message(root, missing))
        # torchvision's __init__ would `pickle.load` the files, which runs any code stored in them:
        # the files are read here with the restricted data unpickler instead.
        VisionDataset.__init__(self, str(root), transform=transform)
        self.train = train
        if download and missing:
            self._download_or_explain(root)
        data, targets = [], []
        split = [name for name, _ in (self.train_list if train else self.test_list)]
        for name in split:
            path = folder / name
            entry = self._read(path, "unreadable")
            try:
                key = next((key for key in self._LABEL_KEYS if key in entry), self._LABEL_KEYS[-1])
                data.append(np.asarray(entry["data"]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1)))
                targets.extend(entry[key])
            except _READ_ERRORS as err:
                raise self._ERROR(self._message("fields", path=path, kind=type(err).__name__, err=err)) from err
        self.data = np.concatenate(data)
        self.targets = list(targets)
        meta_path = folder / self.meta["filename"]
        meta: Any = self._read(meta_path, "meta_unreadable")
        try:
            self.classes = list(meta[self.meta["key"]])
        except _READ_ERRORS as err:
            raise self._ERROR(self._message("meta_key", path=meta_path, kind=type(err).__name__, err=err)) from err
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._validate(folder, folder / split[0], meta_path)

    @classmethod
    def _files(cls) -> tuple[str, ...]:
        """Every file of the extracted archive: the training and test batches and the meta file."""
        return (*(name for name, _ in cls.train_list), *(name for name, _ in cls.test_list), cls.meta["filename"])

    @classmethod
    def _message(cls, key: str, **values: Any) -> str:
        return cls._MESSAGES[key].format(**values)

    @classmethod
    def _missing_message(cls, root: Path, missing: list[str]) -> str:
        """The error message for an incomplete ``<root>/<base_folder>`` folder."""
        holding = ", ".join(cls._files()) if cls._HOLDING is None else cls._HOLDING
        return (
            f"{cls._NAME} not found: expected the folder {root / cls.base_folder} holding {holding} (the extracted "
            f"{cls.filename} from {_SOURCE}), but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Pass `download=True` to download it into {root}, "
            f"or place the extracted `{cls.base_folder}` folder there."
        )

    def _download_or_explain(self, root: Path) -> None:
        """Torchvision's download (md5-checked archive); without network, say how to place the files by hand."""
        try:
            self.download()
        except (URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            placed = "" if self._PLACED is None else f" so that {root / self.base_folder}/{self._PLACED} exist,"
            raise DownloadError(
                f"Could not download {self._NAME} from {self.url} ({type(err).__name__}: {reason}). Without network, "
                f"fetch {self.filename} (md5 {self.tgz_md5}) from {_SOURCE} on another machine, extract it into "
                f"{root}{placed} and run with `download=False`."
            ) from err

    def _read(self, path: Path, message: str) -> Any:
        """Warn (once per file) when a file is not the official one, then read it with the restricted unpickler."""
        md5 = {**dict(self.train_list), **dict(self.test_list), self.meta["filename"]: self.meta["md5"]}
        expected = md5.get(path.name)
        if expected is not None and str(path) not in _WARNED:
            got = file_md5(path)
            if got != expected:
                _WARNED.add(str(path))
                warnings.warn(
                    f"{path} is not the official {self._NAME} file (md5 {got}, expected {expected}); it is read "
                    "with the restricted data unpickler (no code runs) and checked for shape and labels.",
                    stacklevel=3,
                )
        try:
            return load_data_pickle(path)
        except _READ_ERRORS as err:
            raise self._ERROR(self._message(message, path=path, kind=type(err).__name__, err=err)) from err

    def _validate(self, folder: Path, file: Path, meta: Path) -> None:
        data, targets = self.data, np.asarray(self.targets)
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[0] < 1:
            raise self._ERROR(self._message("data", folder=folder, file=file, dtype=data.dtype, shape=data.shape))
        if targets.shape != (data.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
            raise self._ERROR(
                self._message(
                    "labels", folder=folder, file=file, n=data.shape[0], dtype=targets.dtype, shape=targets.shape
                )
            )
        if targets.min() < 0 or targets.max() >= self._NUM_CLASSES:
            raise self._ERROR(self._message("range", folder=folder, file=file, lo=targets.min(), hi=targets.max()))
        if len(self.classes) != self._NUM_CLASSES:
            raise self._ERROR(self._message("classes", meta=meta, count=len(self.classes)))

    def _check_integrity(self) -> bool:
        """True when every file exists (torchvision compares md5 sums here)."""
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in self._files())


class _CIFARDataModule(SplitLoaders, LightningDataModule):
    """The CIFAR data module: the recipe's augmentation, validation on the official test split, synthetic data.

    Subclasses set ``_DATASET`` (a :class:`_SafeCIFARDataset`), ``_MEAN`` and ``_STD``; the arguments are
    documented on :class:`~datamodules.CIFAR10DataModule` and :class:`~datamodules.CIFAR100DataModule`.
    """

    _DATASET: ClassVar[type[_SafeCIFARDataset]]
    _MEAN: ClassVar[tuple[float, float, float]]
    _STD: ClassVar[tuple[float, float, float]]

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
        self.save_hyperparameters()  # also records a subclass's own arguments (Lightning reads every __init__ frame)
        self.num_classes: int = self._DATASET._NUM_CLASSES
        self.image_shape: tuple[int, int, int] = (3, 32, 32)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download the archive when ``download`` is True and the files are missing (rank 0 only)."""
        if self.download and not self.synthetic:
            self._DATASET(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the training split for ``fit`` and the official test split for every stage."""
        fit = stage in (None, "fit") and self.train_set is None
        if fit:
            train_tf = (train_transform if self.augment else test_transform)(self._MEAN, self._STD)
        if self.synthetic:
            from datamodules._synthetic import SyntheticImageDataset

            size, classes = self.synthetic_size, self.num_classes
            if fit:
                self.train_set = SyntheticImageDataset(size, classes, 32, 32, transform=train_tf, seed=0)
            if self.test_set is None:
                test_tf = test_transform(self._MEAN, self._STD)
                self.test_set = SyntheticImageDataset(size, classes, 32, 32, transform=test_tf, seed=1)
            return
        if fit:
            self.train_set = self._DATASET(self.data_dir, train=True, transform=train_tf)
        if self.test_set is None:
            self.test_set = self._DATASET(self.data_dir, train=False, transform=test_transform(self._MEAN, self._STD))
