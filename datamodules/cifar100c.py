"""CIFAR-100-C: the CIFAR-100 test set under 15 common corruptions at 5 severities (robustness evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cmkd_lightning.errors import (
    ArgumentTypeError,
    DataNotFoundError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    UsageError,
)
from cmkd_lightning.utilities.validation import check_bool, check_int, check_optional_bool, check_path
from datamodules._io import loader_kwargs
from datamodules.cifar100 import cifar100_test_transform

#: The 15 corruptions of the CIFAR-100-C benchmark (Hendrycks & Dietterich, 2019), in the paper's order.
CIFAR100C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The 4 held-out corruptions also shipped in CIFAR-100-C.tar (meant for validation, not in the benchmark mean).
CIFAR100C_EXTRA_CORRUPTIONS: tuple[str, ...] = ("gaussian_blur", "saturate", "spatter", "speckle_noise")

_NUM_SEVERITIES = 5
_VALID = CIFAR100C_CORRUPTIONS + CIFAR100C_EXTRA_CORRUPTIONS
_HOW_TO_GET = (
    "CIFAR-100-C (Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations', ICLR 2019) is the file CIFAR-100-C.tar of Zenodo record 3555552 "
    "(https://zenodo.org/records/3555552); extract it and pass the extracted CIFAR-100-C folder, which holds "
    "<corruption>.npy (uint8, shape (50000, 32, 32, 3): severities 1..5 × 10000 images) and labels.npy "
    "(shape (50000,))."
)


def check_corruption(corruption: Any, name: str = "corruption") -> str:
    """Return ``corruption`` if it names a CIFAR-100-C corruption, else raise listing the valid names."""
    if corruption not in _VALID:
        raise InvalidArgumentError(
            f"Expected `{name}` to be one of {', '.join(CIFAR100C_CORRUPTIONS)} (or the extra corruptions "
            f"{', '.join(CIFAR100C_EXTRA_CORRUPTIONS)}), but got {corruption!r}."
        )
    return corruption


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataNotFoundError(f"CIFAR-100-C file {path} not found. {_HOW_TO_GET}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InvalidArgumentError(f"Expected {path} to be a .npy array file, but reading it failed: {err}") from err


class CIFAR100CDataset(Dataset):
    """One corruption at one severity of CIFAR-100-C: ``(image, label)`` pairs.

    ``<root>/<corruption>.npy`` stacks the 5 severities: with ``B = rows // 5`` (10,000 in the release),
    severity ``s`` occupies rows ``(s - 1) * B : s * B``; ``<root>/labels.npy`` holds the matching labels. The
    image file is memory-mapped (``np.load(..., mmap_mode="r")``), so only the rows used are read; it is
    re-opened lazily in each DataLoader worker instead of being pickled.

    Paper: Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.

    Args:
        root: the extracted ``CIFAR-100-C`` folder.
        corruption: one of :data:`CIFAR100C_CORRUPTIONS` (or :data:`CIFAR100C_EXTRA_CORRUPTIONS`).
        severity: 1..5.
        transform: transform applied to each PIL image; None returns the PIL image.

    Raises:
        ValueError: for an unknown corruption, a severity outside 1..5, or files of the wrong shape/dtype.
        TypeError: if ``severity`` is not an int.
        FileNotFoundError: if ``<root>/<corruption>.npy`` or ``<root>/labels.npy`` is missing.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, transform: Callable | None = None) -> None:
        self.root = check_path(root, "root")
        self.corruption = check_corruption(corruption)
        self.severity = check_int(severity, "severity", minimum=1, maximum=_NUM_SEVERITIES)
        self.transform = transform
        self.path = self.root / f"{corruption}.npy"
        images = _load_npy(self.path)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise InvalidArgumentError(
                f"Expected {self.path} to be a uint8 array of shape (rows, 32, 32, 3), but got {images.dtype} "
                f"of shape {images.shape}."
            )
        rows = images.shape[0]
        if rows == 0 or rows % _NUM_SEVERITIES:
            raise InvalidArgumentError(
                f"Expected the number of rows of {self.path} to be a positive multiple of {_NUM_SEVERITIES} "
                f"(one block per severity), but got {rows}."
            )
        labels_path = self.root / "labels.npy"
        labels = _load_npy(labels_path)
        if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidArgumentError(
                f"Expected {labels_path} to be an integer array of shape ({rows},) matching {self.path}, but got "
                f"{labels.dtype} of shape {labels.shape}."
            )
        self.block = rows // _NUM_SEVERITIES
        self.offset = (severity - 1) * self.block
        self.labels = np.array(labels[self.offset : self.offset + self.block], dtype=np.int64)
        if self.labels.min() < 0 or self.labels.max() >= 100:
            raise InvalidArgumentError(
                f"Expected the labels in {labels_path} to lie in [0, 100), but got values in "
                f"[{self.labels.min()}, {self.labels.max()}]."
            )
        self._images: np.ndarray | None = images

    def __len__(self) -> int:
        return self.block

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.block:
            raise IndexOutOfRangeError(f"Expected `index` to be in [0, {self.block}), but got {index}.")
        if self._images is None:  # first access in a worker process
            self._images = np.load(self.path, mmap_mode="r", allow_pickle=False)
        image = Image.fromarray(np.asarray(self._images[self.offset + index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # pickling a memmap would copy the whole file
        return state


def _check_names(values: Any, name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"Expected `{name}` to be a list of corruption names, but got {values!r}.")
    if not values:
        raise InvalidArgumentError(f"Expected `{name}` to be a non-empty list, but got {list(values)}.")
    for value in values:
        check_corruption(value, name)
    if len(set(values)) != len(values):
        raise InvalidArgumentError(f"Expected `{name}` to hold no duplicates, but got {list(values)}.")
    return list(values)


def _check_severities(values: Any) -> list[int]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"Expected `severities` to be a list of ints in 1..5, but got {values!r}.")
    if not values:
        raise InvalidArgumentError(f"Expected `severities` to be a non-empty list, but got {list(values)}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _NUM_SEVERITIES:
            raise InvalidArgumentError(f"Expected `severities` to hold ints in 1..5, but got {list(values)}.")
    if len(set(values)) != len(values):
        raise InvalidArgumentError(f"Expected `severities` to hold no duplicates, but got {list(values)}.")
    return list(values)


class CIFAR100CDataModule(LightningDataModule):
    """CIFAR-100-C as test data: one test dataloader per (corruption, severity).

    ``test_dataloader`` (and ``predict_dataloader``) returns the loaders in the order of :attr:`test_names`,
    ``"<corruption>/s<severity>"`` (corruption-major), so ``dataloader_idx`` ``i`` is ``test_names[i]``.
    Images are normalised with the CIFAR-100 mean/std, without augmentation. Use it to evaluate a model
    trained with :class:`~datamodules.CIFAR100DataModule`: ``trainer.test(model, datamodule=...)``.

    Args:
        data_dir: the extracted ``CIFAR-100-C`` folder.
        corruptions: corruption names; None means the 15 of :data:`CIFAR100C_CORRUPTIONS`.
        severities: severities in 1..5; None means all five.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        synthetic: serve deterministic random 32x32 images through the real transform instead of the ``.npy``
            files (for smoke tests and device checks).
        synthetic_size: number of synthetic samples per (corruption, severity).

    Attributes:
        num_classes: 100.
        image_shape: ``(3, 32, 32)``.
        test_names: ``["gaussian_noise/s1", ..., "jpeg_compression/s5"]``.
    """

    def __init__(
        self,
        data_dir: str | Path = "data/CIFAR-100-C",
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        batch_size: int = 256,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        synthetic: bool = False,
        synthetic_size: int = 256,
    ) -> None:
        super().__init__()
        self.data_dir = check_path(data_dir, "data_dir")
        self.synthetic = check_bool(synthetic, "synthetic")
        self.synthetic_size = check_int(synthetic_size, "synthetic_size", minimum=1)
        self.corruptions = _check_names(CIFAR100C_CORRUPTIONS if corruptions is None else corruptions, "corruptions")
        self.severities = _check_severities(list(range(1, 6)) if severities is None else severities)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.num_workers = check_int(num_workers, "num_workers", minimum=0)
        self.pin_memory = check_optional_bool(pin_memory, "pin_memory")
        self.save_hyperparameters()
        self.num_classes: int = 100
        self.image_shape: tuple[int, int, int] = (3, 32, 32)
        self.test_names = [f"{c}/s{s}" for c in self.corruptions for s in self.severities]
        self.test_sets: list[Dataset] = []

    def setup(self, stage: str | None = None) -> None:
        """Open every requested (corruption, severity); report all missing files at once."""
        if self.test_sets:
            return
        if self.synthetic:
            from datamodules._synthetic import SyntheticImageDataset

            transform = cifar100_test_transform()
            self.test_sets = [
                SyntheticImageDataset(self.synthetic_size, 100, 32, 32, transform=transform, seed=2 + i)
                for i in range(len(self.test_names))
            ]
            return
        needed = [self.data_dir / f"{c}.npy" for c in self.corruptions] + [self.data_dir / "labels.npy"]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            raise DataNotFoundError(f"CIFAR-100-C files not found: {', '.join(missing)}. {_HOW_TO_GET}")
        transform = cifar100_test_transform()
        self.test_sets = [
            CIFAR100CDataset(self.data_dir, c, s, transform=transform)
            for c in self.corruptions
            for s in self.severities
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per entry of :attr:`test_names`, in that order, unshuffled."""
        if not self.test_sets:
            raise UsageError("Call `setup()` before requesting the test dataloaders.")
        kwargs = loader_kwargs(self.batch_size, self.num_workers, self.pin_memory)
        kwargs["persistent_workers"] = False  # each loader is read once; 75 kept-alive worker pools would pile up
        return [DataLoader(dataset, shuffle=False, **kwargs) for dataset in self.test_sets]

    def predict_dataloader(self) -> list[DataLoader]:
        """The same loaders as :meth:`test_dataloader`."""
        return self.test_dataloader()
