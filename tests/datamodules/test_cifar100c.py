"""CIFAR-100-C dataset and datamodule on tiny .npy files in the release layout: blocks, memory map, errors."""

import pickle
import re

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR100C_CORRUPTIONS,
    CIFAR100CDataModule,
    CIFAR100CDataset,
)
from tests._fakes import write_fake_cifar100c

N = 4  # images per severity


@pytest.fixture
def root(tmp_path):
    return write_fake_cifar100c(tmp_path, corruptions=("gaussian_noise", "fog"), n_per_severity=N, seed=2)


def normalised(images):
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.array(CIFAR100_MEAN, dtype=np.float32)[:, None, None]) / np.array(CIFAR100_STD, dtype=np.float32)[
        :, None, None
    ]


def test_the_fifteen_standard_corruptions():
    assert len(CIFAR100C_CORRUPTIONS) == len(set(CIFAR100C_CORRUPTIONS)) == 15
    assert CIFAR100C_CORRUPTIONS[0] == "gaussian_noise" and CIFAR100C_CORRUPTIONS[-1] == "jpeg_compression"


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_severity_selects_its_block_of_rows(root, severity):
    images, labels = np.load(root / "fog.npy"), np.load(root / "labels.npy")
    rows = slice((severity - 1) * N, severity * N)
    ds = CIFAR100CDataset(root, "fog", severity)
    assert len(ds) == N
    for i in range(N):
        image, label = ds[i]
        np.testing.assert_array_equal(np.asarray(image), images[rows][i])
        assert label == labels[rows][i] and isinstance(label, int)
    with pytest.raises(IndexError, match=re.escape(f"Expected `index` to be in [0, {N}), but got {N}.")):
        ds[N]


def test_images_are_memory_mapped_and_not_pickled(root):
    ds = CIFAR100CDataset(root, "gaussian_noise", 2)
    assert isinstance(ds._images, np.memmap)
    blob = pickle.dumps(ds)
    assert len(blob) < np.load(root / "gaussian_noise.npy").nbytes / 4
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(np.asarray(clone[1][0]), np.asarray(ds[1][0]))


def test_datamodule_loaders_names_and_normalisation(root):
    dm = CIFAR100CDataModule(
        root, corruptions=["fog", "gaussian_noise"], severities=[5, 2], batch_size=N, num_workers=0
    )
    assert dm.num_classes == 100 and dm.image_shape == (3, 32, 32)
    assert dm.test_names == ["fog/s5", "fog/s2", "gaussian_noise/s5", "gaussian_noise/s2"]
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 4 and len(dm.predict_dataloader()) == 4
    labels = np.load(root / "labels.npy")
    for name, loader in zip(dm.test_names, loaders):
        corruption, severity = name.split("/s")
        rows = slice((int(severity) - 1) * N, int(severity) * N)
        x, y = next(iter(loader))
        assert x.shape == (N, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_allclose(x.numpy(), normalised(np.load(root / f"{corruption}.npy")[rows]), atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), labels[rows])
        assert loader.persistent_workers is False


def test_defaults_are_all_fifteen_by_five():
    dm = CIFAR100CDataModule()
    assert len(dm.test_names) == 75 and dm.test_names[:2] == ["gaussian_noise/s1", "gaussian_noise/s2"]
    assert dm.test_names[-1] == "jpeg_compression/s5"


def test_extra_corruptions_are_accepted(tmp_path):
    root = write_fake_cifar100c(tmp_path, corruptions=("speckle_noise",), n_per_severity=2)
    assert len(CIFAR100CDataset(root, "speckle_noise", 3)) == 2


def test_lightning_test_loop_runs_every_loader(root):
    class Linear(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 100))

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            x, y = batch
            self.log("test/acc", (self.net(x).argmax(1) == y).float().mean())

    dm = CIFAR100CDataModule(
        root, corruptions=["fog", "gaussian_noise"], severities=[1, 3, 5], batch_size=2, num_workers=0
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = Linear()
    results = trainer.test(model, datamodule=dm, verbose=False)
    assert len(results) == len(dm.test_names) == 6
    # each result is the accuracy on its own loader (corruption x severity), in the order of dm.test_names
    with torch.no_grad():
        for i, loader in enumerate(dm.test_dataloader()):
            expected = torch.cat([(model.net(x).argmax(1) == y).float() for x, y in loader]).mean()
            assert results[i][f"test/acc/dataloader_idx_{i}"] == pytest.approx(float(expected), abs=1e-6)


def test_missing_files_are_all_listed_with_how_to_get_them(root):
    dm = CIFAR100CDataModule(root, num_workers=0)  # all 15 requested, 2 present
    with pytest.raises(
        FileNotFoundError, match=r"CIFAR-100-C files not found: .*shot_noise\.npy, .*jpeg_compression\.npy\. "
    ) as info:
        dm.setup("test")
    assert "fog.npy" not in str(info.value)
    assert "Hendrycks & Dietterich" in str(info.value) and "https://zenodo.org/records/3555552" in str(info.value)


def test_missing_labels(root):
    (root / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"CIFAR-100-C file {root / 'labels.npy'} not found.")):
        CIFAR100CDataset(root, "fog", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"corruption": "gaussian"},
            ValueError,
            "Expected `corruption` to be one of gaussian_noise, shot_noise, impulse_noise,",
        ),
        ({"severity": 0}, ValueError, "Expected `severity` to be an int in [1, 5], but got 0."),
        ({"severity": 6}, ValueError, "Expected `severity` to be an int in [1, 5], but got 6."),
        ({"severity": "1"}, TypeError, "Expected `severity` to be an int in [1, 5], but got str '1'."),
    ],
)
def test_dataset_invalid_arguments(root, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CIFAR100CDataset(root, **{"corruption": "fog", "severity": 1, **kwargs})


@pytest.mark.parametrize(
    ("file", "array", "message"),
    [
        (
            "fog.npy",
            np.zeros((7, 32, 32, 3), np.uint8),
            "to be a positive multiple of 5 (one block per severity), but got 7.",
        ),
        (
            "fog.npy",
            np.zeros((0, 32, 32, 3), np.uint8),
            "to be a positive multiple of 5 (one block per severity), but got 0.",
        ),
        (
            "fog.npy",
            np.zeros((20, 32, 32), np.uint8),
            "to be a uint8 array of shape (rows, 32, 32, 3), but got uint8 of shape (20, 32, 32).",
        ),
        ("fog.npy", np.zeros((20, 32, 32, 3), np.float32), "but got float32 of shape (20, 32, 32, 3)."),
        ("labels.npy", np.zeros(15, np.uint8), "labels.npy to be an integer array of shape (20,) matching"),
        ("labels.npy", np.zeros(20, np.float64), "but got float64 of shape (20,)."),
        ("labels.npy", np.full(20, 100, np.int64), "labels.npy to lie in [0, 100), but got values in [100, 100]."),
    ],
)
def test_malformed_files(root, file, array, message):
    np.save(root / file, array)
    with pytest.raises(ValueError, match=re.escape(message)):
        CIFAR100CDataset(root, "fog", 1)


def test_file_that_is_not_npy(root):
    (root / "fog.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"fog\.npy to be a \.npy array file, but reading it failed"):
        CIFAR100CDataset(root, "fog", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"corruptions": "fog"}, TypeError, "Expected `corruptions` to be a list of corruption names, but got 'fog'."),
        ({"corruptions": []}, ValueError, "Expected `corruptions` to be a non-empty list, but got []."),
        ({"corruptions": ["fog", "fgo"]}, ValueError, "Expected `corruptions` to be one of gaussian_noise,"),
        (
            {"corruptions": ["fog", "fog"]},
            ValueError,
            "Expected `corruptions` to hold no duplicates, but got ['fog', 'fog'].",
        ),
        ({"severities": [0, 1]}, ValueError, "Expected `severities` to hold ints in 1..5, but got [0, 1]."),
        ({"severities": [True]}, ValueError, "Expected `severities` to hold ints in 1..5, but got [True]."),
        ({"severities": []}, ValueError, "Expected `severities` to be a non-empty list, but got []."),
        ({"severities": [2, 2]}, ValueError, "Expected `severities` to hold no duplicates, but got [2, 2]."),
        ({"severities": 3}, TypeError, "Expected `severities` to be a list of ints in 1..5, but got 3."),
        ({"batch_size": 0}, ValueError, "Expected `batch_size` to be an int >= 1, but got 0."),
    ],
)
def test_datamodule_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CIFAR100CDataModule(**kwargs)


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match=re.escape("Call `setup()` before requesting the test dataloaders.")):
        CIFAR100CDataModule().test_dataloader()
