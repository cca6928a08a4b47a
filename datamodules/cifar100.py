"""CIFAR-100 through torchvision, with the recipe's augmentation and normalisation."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR100, VisionDataset

from cmkd_lightning._validation import check_bool, check_int, check_optional_bool, check_path
from datamodules._io import file_md5, load_data_pickle, loader_kwargs

#: Per-channel mean and std of the CIFAR-100 training images (the values of the reference repos).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_FOLDER = "cifar-100-python"
_FILES = ("train", "test", "meta")
_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
#: MD5 sums of the official files, as torchvision lists them.
_MD5 = {
    **dict(CIFAR100.train_list),
    **dict(CIFAR100.test_list),
    CIFAR100.meta["filename"]: CIFAR100.meta["md5"],
}
_WARNED: set[str] = set()
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


class MalformedCIFAR100Error(ValueError):
    """A CIFAR-100 file exists but does not hold what the official archive holds."""


def cifar100_missing_message(root: Path, missing: list[str]) -> str:
    """The error message for an incomplete ``<root>/cifar-100-python`` folder."""
    return (
        f"CIFAR-100 not found: expected the folder {root / _FOLDER} holding the files train, test and meta "
        f"(the extracted cifar-100-python.tar.gz from {_SOURCE}), but {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing. Pass `download=True` to download it into {root}, "
        f"or place the extracted `{_FOLDER}` folder there."
    )


class CIFAR100Dataset(CIFAR100):
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

    def __init__(
        self, root: str | Path, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        root = check_path(root, "root")
        missing = [name for name in _FILES if not (root / _FOLDER / name).is_file()]
        if missing and not download:
            raise FileNotFoundError(cifar100_missing_message(root, missing))
        split = "train" if train else "test"
        # torchvision's CIFAR100.__init__ would `pickle.load` the files, which runs any code stored in them:
        # the files are read here with the restricted data unpickler instead.
        VisionDataset.__init__(self, str(root), transform=transform)
        self.train = train
        if download:
            self._download_or_explain(root)
        path = root / _FOLDER / split
        try:
            self._check_md5(path)
            entry = load_data_pickle(path)
            self.data = np.vstack([entry["data"]]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = list(entry["labels"] if "labels" in entry else entry["fine_labels"])
            self._load_meta()
        except MalformedCIFAR100Error:
            raise
        except _READ_ERRORS as err:
            raise MalformedCIFAR100Error(
                f"Expected {root / _FOLDER / split} to be a pickled dict with keys 'data' (uint8, shape "
                f"(N, 3072)) and 'fine_labels' (N ints) as in the official archive, but reading it failed with "
                f"{type(err).__name__}: {err}. Delete the folder and pass `download=True` to fetch it again."
            ) from err
        self._validate(root / _FOLDER / split)

    def _validate(self, path: Path) -> None:
        data = self.data
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[0] < 1:
            got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise MalformedCIFAR100Error(
                f"Expected the 'data' of {path} to be a non-empty uint8 array of shape (N, 3072), but got {got}."
            )
        targets = np.asarray(self.targets)
        if targets.shape != (data.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
            raise MalformedCIFAR100Error(
                f"Expected {path} to hold {data.shape[0]} integer 'fine_labels' (one per image), but got "
                f"{targets.dtype} labels of shape {targets.shape}."
            )
        if targets.min() < 0 or targets.max() >= 100:
            raise MalformedCIFAR100Error(
                f"Expected the 'fine_labels' of {path} to lie in [0, 100), but got values in "
                f"[{targets.min()}, {targets.max()}]."
            )
        if len(self.classes) != 100:
            raise MalformedCIFAR100Error(
                f"Expected {path.parent / 'meta'} to list 100 'fine_label_names', but got {len(self.classes)}."
            )

    def _download_or_explain(self, root: Path) -> None:
        """Torchvision's download (md5-checked archive); without network, say how to place the files by hand."""
        try:
            self.download()
        except (URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise ConnectionError(
                f"Could not download CIFAR-100 from {self.url} ({type(err).__name__}: {reason}). Without network, "
                f"fetch {self.filename} (md5 {self.tgz_md5}) from {_SOURCE} on another machine, extract it into "
                f"{root} so that {root / _FOLDER}/train, test and meta exist, and run with `download=False`."
            ) from err

    def _check_md5(self, path: Path) -> None:
        """Warn (once per file) when a file differs from the official archive's: it is still read safely."""
        expected = _MD5.get(path.name)
        if expected is None or str(path) in _WARNED:
            return
        got = file_md5(path)
        if got != expected:
            _WARNED.add(str(path))
            warnings.warn(
                f"{path} is not the official CIFAR-100 file (md5 {got}, expected {expected}); it is read with the "
                "restricted data unpickler (no code runs) and checked for shape and labels.",
                stacklevel=3,
            )

    def _check_integrity(self) -> bool:
        """True when every file exists (torchvision compares md5 sums here)."""
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in _FILES)

    def _load_meta(self) -> None:
        """Read the class names from ``meta`` without torchvision's md5 check."""
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        try:
            self._check_md5(path)
            meta: Any = load_data_pickle(path)
            self.classes = list(meta[self.meta["key"]])
        except _READ_ERRORS as err:
            raise MalformedCIFAR100Error(
                f"Expected {path} to be a pickled dict with key 'fine_label_names' as in the official archive, "
                f"but reading it failed with {type(err).__name__}: {err}."
            ) from err
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def cifar100_train_transform() -> Callable:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize(CIFAR-100 mean/std)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


def cifar100_test_transform() -> Callable:
    """ToTensor + Normalize(CIFAR-100 mean/std)."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


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


class CIFAR100DataModule(LightningDataModule):
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

    Attributes:
        num_classes: 100.
        image_shape: ``(3, 32, 32)``.
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
        teacher_cache: str | Path | None = None,
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
        self.teacher_cache = None if teacher_cache is None else check_path(teacher_cache, "teacher_cache")
        self.logit_cache: Any = None  # the opened TeacherLogitCache after setup("fit")
        self.save_hyperparameters()
        self.num_classes: int = 100
        self.image_shape: tuple[int, int, int] = (3, 32, 32)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download the archive when ``download`` is True and the files are missing (rank 0 only)."""
        if self.download and not self.synthetic:
            CIFAR100Dataset(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the training split for ``fit`` and the official test split for every stage."""
        if self.teacher_cache is not None and stage in (None, "fit") and self.train_set is None:
            self.train_set = self._cached_view_train_set()
        if self.synthetic:
            from datamodules._synthetic import SyntheticImageDataset

            if stage in (None, "fit") and self.train_set is None:
                train_tf = cifar100_train_transform() if self.augment else cifar100_test_transform()
                self.train_set = SyntheticImageDataset(self.synthetic_size, 100, 32, 32, transform=train_tf, seed=0)
            if self.test_set is None:
                self.test_set = SyntheticImageDataset(
                    self.synthetic_size, 100, 32, 32, transform=cifar100_test_transform(), seed=1
                )
            return
        if stage in (None, "fit") and self.train_set is None:
            train_tf = cifar100_train_transform() if self.augment else cifar100_test_transform()
            self.train_set = CIFAR100Dataset(self.data_dir, train=True, transform=train_tf)
        if self.test_set is None:
            self.test_set = CIFAR100Dataset(self.data_dir, train=False, transform=cifar100_test_transform())

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
