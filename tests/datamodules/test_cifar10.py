"""CIFAR10DataModule and CIFAR10CDataset on small files in the official on-disk formats."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import CIFAR10_MEAN, CIFAR10_STD, CIFAR10CDataset, CIFAR10DataModule, CIFAR10Dataset
from datamodules.cifar10 import cifar10_test_transform
from tests._fakes import py2_pickle_dumps, write_fake_cifar100c

MEAN = np.array(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(CIFAR10_STD, dtype=np.float32)[:, None, None]
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def write_fake_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/``: five training batches, ``test_batch`` and ``batches.meta`` as py2 pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [*((b, n_per_batch) for b in TRAIN), ("test_batch", n_test)]:
        entry = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"fake_{name}_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(py2_pickle_dumps(entry))
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [f"c{i}".encode() for i in range(10)],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle_dumps(meta))
    return root


def read_raw(root, name):
    with open(root / "cifar-10-batches-py" / name, "rb") as file:
        return pickle.load(file, encoding="bytes")


@pytest.fixture
def data_dir(tmp_path):
    return write_fake_cifar10(tmp_path)


def make(data_dir, **kwargs):
    dm = CIFAR10DataModule(data_dir, **{"batch_size": 8, "num_workers": 0, "pin_memory": False, **kwargs})
    dm.setup("fit")
    return dm


def test_images_labels_and_normalisation_match_the_raw_files(data_dir):
    dm = make(data_dir, augment=False)
    assert (dm.num_classes, dm.image_shape) == (10, (3, 32, 32))
    assert len(dm.train_set) == 20 and len(dm.test_set) == 6
    raw = [read_raw(data_dir, name) for name in TRAIN]
    labels = [label for entry in raw for label in entry[b"labels"]]
    images = np.vstack([entry[b"data"] for entry in raw]).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    x, y = next(iter(torch.utils.data.DataLoader(dm.train_set, batch_size=20)))
    assert y.tolist() == labels
    np.testing.assert_allclose(x.numpy(), (images - MEAN) / STD, atol=1e-6)
    test = read_raw(data_dir, "test_batch")
    x, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == test[b"labels"]
    assert dm.train_set.classes == [f"c{i}" for i in range(10)]


def test_augmented_batches_keep_shape(data_dir):
    x, y = next(iter(make(data_dir).train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_unofficial_files_warn_once_and_missing_files_say_where(data_dir, tmp_path):
    with pytest.warns(UserWarning, match="is not the official CIFAR-10 file"):
        CIFAR10Dataset(write_fake_cifar10(tmp_path / "other", seed=3), train=False)
    (data_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("data_batch_3 is missing. Pass `download=True`")):
        CIFAR10Dataset(data_dir, train=True)


def test_malformed_and_code_carrying_files_are_refused(data_dir):
    path = data_dir / "cifar-10-batches-py" / "test_batch"
    entry = read_raw(data_dir, "test_batch")
    entry[b"labels"] = [10] * len(entry[b"labels"])
    path.write_bytes(py2_pickle_dumps(entry))
    with pytest.raises(ValueError, match=re.escape("to lie in [0, 10), but got values in [10, 10]")):
        CIFAR10Dataset(data_dir, train=False)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path.write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="reading it failed"):
        CIFAR10Dataset(data_dir, train=False)


def test_synthetic_needs_no_files(tmp_path):
    dm = CIFAR10DataModule(tmp_path / "absent", synthetic=True, synthetic_size=12, batch_size=4, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and int(y.max()) < 10


def test_cifar10c_reads_the_release_layout_and_checks_labels(tmp_path):
    root = write_fake_cifar100c(tmp_path / "c10c", corruptions=("elastic_transform",), n_per_severity=3)
    labels = np.load(root / "labels.npy") % 10
    np.save(root / "labels.npy", labels)
    images = np.load(root / "elastic_transform.npy")
    ds = CIFAR10CDataset(root, "elastic_transform", 2, transform=cifar10_test_transform())
    x, y = ds[1]
    assert len(ds) == 3 and y == labels[4]
    expected = (images[4].transpose(2, 0, 1).astype(np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    np.save(root / "labels.npy", labels + 10)
    with pytest.raises(ValueError, match=re.escape("to lie in [0, 10) (CIFAR-10-C)")):
        CIFAR10CDataset(root, "elastic_transform", 1)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=re.escape("Expected `batch_size` to be an int >= 1, but got 0.")):
        CIFAR10DataModule(tmp_path, batch_size=0)
