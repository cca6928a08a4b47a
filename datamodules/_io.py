"""DataLoader settings shared by the data modules, and reading data files safely (no code runs from a pickle)."""

from __future__ import annotations

import codecs
import hashlib
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from cmkd_lightning.errors import UsageError


def loader_kwargs(batch_size: int, num_workers: int, pin_memory: bool | None) -> dict[str, Any]:
    """Keyword arguments common to every DataLoader of a datamodule.

    ``pin_memory=None`` pins host memory exactly when CUDA is available; workers are kept alive between
    epochs (``persistent_workers``) whenever there are any.
    """
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": pin,
        "persistent_workers": num_workers > 0,
    }


class SplitLoaders:
    """Mixin: the four dataloaders of a data module with one training split and one evaluation split.

    ``train_dataloader`` shuffles ``self.train_set``; validation, test and predict read the evaluation split (the
    attribute named by ``EVAL_SET``) in fixed order. The host class sets ``batch_size``, ``num_workers`` and
    ``pin_memory``; asking before ``setup()`` raises.
    """

    EVAL_SET: ClassVar[str] = "test_set"
    train_set: Any
    batch_size: int
    num_workers: int
    pin_memory: bool | None

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise UsageError("Call `setup()` before requesting a dataloader.")
        return DataLoader(dataset, shuffle=shuffle, **loader_kwargs(self.batch_size, self.num_workers, self.pin_memory))

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The evaluation split, in fixed order."""
        return self._loader(getattr(self, self.EVAL_SET), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The evaluation split, in fixed order."""
        return self._loader(getattr(self, self.EVAL_SET), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The evaluation split, in fixed order."""
        return self._loader(getattr(self, self.EVAL_SET), shuffle=False)


class _DataUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, dtypes and scalars besides the built-in containers."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _SAFE_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"Refused to load `{module}.{name}`: a data file may hold only dicts, lists, strings, bytes, numbers "
                "and numpy arrays, and this reference could run code."
            )
        return allowed


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core
    entries = {
        "multiarray._reconstruct": core.multiarray._reconstruct,
        "multiarray.scalar": core.multiarray.scalar,
        "numeric._frombuffer": getattr(core.numeric, "_frombuffer", None),
    }
    table: dict[tuple[str, str], Any] = {("_codecs", "encode"): codecs.encode}
    for base in ("numpy.core", "numpy._core"):
        for dotted, value in entries.items():
            module, name = dotted.rsplit(".", 1)
            if value is not None:
                table[(f"{base}.{module}", name)] = value
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


_SAFE_GLOBALS = _numpy_globals()


def load_data_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Read a pickled data file (e.g. a CIFAR batch) without running code stored in it.

    Only built-in containers and values, numpy arrays, dtypes and scalars are built; any other reference (such as
    ``os.system``) raises :class:`pickle.UnpicklingError` before anything runs.

    Example:
        >>> import io, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "batch"
        >>> _ = path.write_bytes(pickle.dumps({"data": np.zeros((2, 3), np.uint8), "labels": [1, 2]}, protocol=2))
        >>> load_data_pickle(path)["data"].shape
        (2, 3)
    """
    with open(path, "rb") as file:
        return _DataUnpickler(file, encoding=encoding).load()


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hexadecimal MD5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()
