"""CIFAR100DataModule on fake files in the official pickle format: loading, transforms, download path, errors."""

import os
import pickle
import re
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from datamodules import CIFAR100_MEAN, CIFAR100_STD, CIFAR100DataModule, CIFAR100Dataset
from tests._fakes import py2_pickle_dumps, write_fake_cifar100

MEAN = np.array(CIFAR100_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(CIFAR100_STD, dtype=np.float32)[:, None, None]


@pytest.fixture
def data_dir(tmp_path):
    return write_fake_cifar100(tmp_path, n_train=24, n_test=12, seed=1)


def read_raw(data_dir, name):
    with open(data_dir / "cifar-100-python" / name, "rb") as file:
        return pickle.load(file, encoding="bytes")


def reference(entry):
    """(data / 255 - mean) / std per channel, in CHW, from the raw (N, 3072) rows."""
    images = entry[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return (images - MEAN) / STD


def make(data_dir, **kwargs):
    dm = CIFAR100DataModule(data_dir, **{"batch_size": 8, "num_workers": 0, "pin_memory": False, **kwargs})
    dm.setup("fit")
    return dm


def test_fake_files_have_the_official_pickle_keys(data_dir):
    train = read_raw(data_dir, "train")
    assert set(train) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (24, 3072)
    assert set(read_raw(data_dir, "meta")) == {b"fine_label_names", b"coarse_label_names"}
    with open(data_dir / "cifar-100-python" / "test", "rb") as file:  # torchvision's way: str keys
        assert set(pickle.load(file, encoding="latin1")) == {
            "data",
            "fine_labels",
            "coarse_labels",
            "filenames",
            "batch_label",
        }


def test_batches_shapes_dtypes_and_labels(data_dir):
    dm = make(data_dir)
    assert dm.num_classes == 100 and dm.image_shape == (3, 32, 32)
    assert len(dm.train_set) == 24 and len(dm.test_set) == 12
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 100


def test_val_and_test_are_the_official_test_split_normalised(data_dir):
    dm = make(data_dir, batch_size=12)
    raw = read_raw(data_dir, "test")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        np.testing.assert_allclose(x.numpy(), reference(raw), atol=1e-5)
        assert y.tolist() == raw[b"fine_labels"]
    assert dm.test_set.classes == [f"fine_{i}" for i in range(100)]


def test_train_without_augmentation_is_the_normalised_train_split(data_dir):
    dm = make(data_dir, batch_size=24, augment=False)
    x = torch.stack([dm.train_set[i][0] for i in range(24)])
    np.testing.assert_allclose(x.numpy(), reference(read_raw(data_dir, "train")), atol=1e-5)


def test_train_augmentation_is_a_padded_crop_and_optional_flip(data_dir):
    dm = make(data_dir)
    ref = reference(read_raw(data_dir, "train"))[0]
    padded = np.broadcast_to(-MEAN / STD, (3, 40, 40)).copy()  # zero padding, then normalised
    padded[:, 4:36, 4:36] = ref
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop[:, :, ::-1]
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        x = dm.train_set[0][0].numpy()
        match = [key for key, crop in candidates.items() if np.allclose(x, crop, atol=1e-5)]
        assert match, "augmented image is no crop/flip of the padded original"
        seen.update(match)
    assert len(seen) > 5 and {key[2] for key in seen} == {False, True}


def test_missing_dataset_says_where_and_how(tmp_path):
    dm = CIFAR100DataModule(tmp_path, num_workers=0)
    message = (
        f"CIFAR-100 not found: expected the folder {tmp_path / 'cifar-100-python'} holding the files train, test "
        "and meta"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(message)) as info:
        dm.setup("fit")
    assert "train, test, meta are missing" in str(info.value)
    assert "Pass `download=True`" in str(info.value) and "place the extracted `cifar-100-python` folder" in str(
        info.value
    )


def test_one_missing_file_is_named(data_dir):
    (data_dir / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="but meta is missing"):
        CIFAR100Dataset(data_dir, train=False)


def test_download_true_with_present_files_does_not_touch_the_network(data_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    dm = CIFAR100DataModule(data_dir, download=True, batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 24


def test_download_true_fetches_the_official_archive_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename, md5))
        write_fake_cifar100(download_root, n_train=6, n_test=5)

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    dm = CIFAR100DataModule(tmp_path, download=True, batch_size=4, num_workers=0)
    dm.prepare_data()
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        )
    ]
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.test_set)) == (6, 5)


def rewrite(data_dir, name, change):
    entry = read_raw(data_dir, name)
    change(entry)
    (data_dir / "cifar-100-python" / name).write_bytes(py2_pickle_dumps(entry))


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        (
            "train",
            lambda p: p.write_bytes(p.read_bytes()[:500]),
            r"train to be a pickled dict .* but reading it failed",
        ),
        ("train", lambda p: p.write_bytes(b"not a pickle"), r"train to be a pickled dict .* UnpicklingError"),
        (
            "train",
            lambda p: rewrite(p.parents[1], "train", lambda e: e.pop(b"fine_labels")),
            r"KeyError: 'fine_labels'",
        ),
        ("train", lambda p: rewrite(p.parents[1], "train", lambda e: e.pop(b"data")), r"KeyError: 'data'"),
        (
            "train",
            lambda p: rewrite(p.parents[1], "train", lambda e: e.update({b"data": e[b"data"][:, :3000]})),
            r"train to be a pickled dict .* ValueError: cannot reshape",
        ),
        (
            "train",
            lambda p: rewrite(p.parents[1], "train", lambda e: e.update({b"data": e[b"data"].astype(np.float32)})),
            r"'data' of .*train to be a non-empty uint8 array of shape \(N, 3072\), but got float32",
        ),
        (
            "train",
            lambda p: rewrite(p.parents[1], "train", lambda e: e.update({b"fine_labels": [100] * 24})),
            r"'fine_labels' of .*train to lie in \[0, 100\), but got values in \[100, 100\]",
        ),
        (
            "train",
            lambda p: rewrite(p.parents[1], "train", lambda e: e.update({b"fine_labels": [1] * 23})),
            r"train to hold 24 integer 'fine_labels' \(one per image\), but got int64 labels of shape \(23,\)",
        ),
        (
            "meta",
            lambda p: rewrite(p.parents[1], "meta", lambda e: e.pop(b"fine_label_names")),
            r"meta to be a pickled dict with key 'fine_label_names' .* KeyError",
        ),
        (
            "meta",
            lambda p: rewrite(p.parents[1], "meta", lambda e: e.update({b"fine_label_names": [b"a"] * 10})),
            r"meta to list 100 'fine_label_names', but got 10",
        ),
    ],
)
def test_malformed_files_raise_clear_errors(data_dir, name, corrupt, message):
    corrupt(data_dir / "cifar-100-python" / name)
    with pytest.raises(ValueError, match=message):
        make(data_dir)


def test_empty_split_is_an_error_not_an_empty_dataset(tmp_path):
    write_fake_cifar100(tmp_path, n_train=0, n_test=3)
    with pytest.raises(
        ValueError,
        match=r"to be a non-empty uint8 array of shape \(N, 3072\), but got uint8 array of shape \(0, 32, 32, 3\)",
    ):
        make(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"data_dir": 3}, TypeError, "Expected `data_dir` to be a str or os.PathLike, but got int 3."),
        ({"data_dir": ""}, ValueError, "Expected `data_dir` to be a non-empty path, but got ''."),
        ({"download": "yes"}, TypeError, "Expected `download` to be a bool, but got str 'yes'."),
        ({"batch_size": 0}, ValueError, "Expected `batch_size` to be an int >= 1, but got 0."),
        ({"num_workers": -2}, ValueError, "Expected `num_workers` to be an int >= 0, but got -2."),
        ({"pin_memory": "no"}, TypeError, "Expected `pin_memory` to be a bool or None, but got str 'no'."),
        ({"augment": None}, TypeError, "Expected `augment` to be a bool, but got NoneType None."),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CIFAR100DataModule(**kwargs)


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match=re.escape("Call `setup()` before requesting a dataloader.")):
        CIFAR100DataModule().val_dataloader()


def test_persistent_workers_follow_num_workers(data_dir):
    assert make(data_dir, num_workers=2).val_dataloader().persistent_workers is True
    assert make(data_dir).val_dataloader().persistent_workers is False


class _CreatesFile:
    """Unpickling this object would run `touch <target>`: what a crafted data file carries."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("name", ["train", "test", "meta"])
def test_a_crafted_pickle_is_refused_before_it_runs_code(data_dir, tmp_path, name):
    target = tmp_path / "created_by_the_data_file"
    entry = read_raw(data_dir, name)
    entry[b"payload"] = _CreatesFile(target)
    (data_dir / "cifar-100-python" / name).write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=r"Refused to load `posix\.system`.* could run code"):
        make(data_dir)
    assert not target.exists()
    # The same file through plain pickle really would have run it: the test is not vacuous.
    with open(data_dir / "cifar-100-python" / name, "rb") as file:
        pickle.load(file, encoding="latin1")
    assert target.exists()


def test_files_that_are_not_the_official_ones_are_named_in_a_warning(data_dir):
    with pytest.warns(
        UserWarning, match=r"cifar-100-python/train is not the official CIFAR-100 file \(md5 [0-9a-f]{32}"
    ):
        make(data_dir)


def test_download_without_network_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    dm = CIFAR100DataModule(tmp_path, download=True, batch_size=4, num_workers=0)
    with pytest.raises(ConnectionError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "Could not download CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "Network is unreachable" in message
    assert "md5 eb9058c3a382ffc7106e4002c42a8d85" in message
    assert f"extract it into {tmp_path} so that {tmp_path / 'cifar-100-python'}/train, test and meta exist" in message
