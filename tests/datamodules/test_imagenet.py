"""ImageNetDataModule on a tiny fake ImageFolder tree: transforms against a PIL/numpy reference, errors."""

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import IMAGENET_MEAN, IMAGENET_STD, ImageNetDataModule
from tests._fakes import write_fake_imagenet

SMALL = {"num_classes": 3, "image_size": 32, "resize_size": 36, "batch_size": 4, "num_workers": 0, "pin_memory": False}


@pytest.fixture
def data_dir(tmp_path):
    return write_fake_imagenet(tmp_path, num_classes=3, per_class=2, size=40)


def make(data_dir, stage="fit", **kwargs):
    dm = ImageNetDataModule(data_dir, **{**SMALL, **kwargs})
    dm.setup(stage)
    return dm


def test_batches_shapes_dtypes_and_labels(data_dir):
    dm = make(data_dir)
    assert dm.num_classes == 3 and dm.image_shape == (3, 32, 32)
    assert len(dm.train_set) == 6 and len(dm.val_set) == 6
    assert dm.train_set.classes == dm.val_set.classes == ["n00000000", "n00000001", "n00000002"]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 3


def test_eval_transform_is_resize_center_crop_normalise(data_dir):
    dm = make(data_dir, stage="validate")
    assert dm.train_set is None  # validation does not index the training folder
    path, label = dm.val_set.samples[3]
    image = Image.open(path).convert("RGB")  # 48 wide, 40 high
    resized = np.asarray(image.resize((43, 36), Image.BILINEAR), dtype=np.float32) / 255.0  # shorter edge -> 36
    crop = resized[2:34, 6:38].transpose(2, 0, 1)  # centre 32x32: top round(4/2), left round(11/2)
    expected = (crop - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    x, y = dm.val_set[3]
    assert y == label == 1
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_train_transform_is_random(data_dir):
    dm = make(data_dir)
    torch.manual_seed(0)
    a = dm.train_set[0][0]
    torch.manual_seed(1)
    b = dm.train_set[0][0]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    no_aug = make(data_dir, augment=False)
    assert torch.equal(no_aug.train_set[0][0], no_aug.train_set[0][0])


def test_persistent_workers_and_pin_memory(data_dir):
    loader = make(data_dir, num_workers=2, pin_memory=True).val_dataloader()
    assert loader.persistent_workers is True and loader.pin_memory is True and loader.num_workers == 2
    assert make(data_dir).val_dataloader().persistent_workers is False


def test_num_classes_must_match_the_class_folders(data_dir):
    message = f"Expected `num_classes` = 1000 class folders in {data_dir / 'val'}, but found 3. Pass `num_classes=3`"
    with pytest.raises(ValueError, match=re.escape(message)):
        make(data_dir, num_classes=1000)


def test_missing_data_dir(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"ImageNet split folder {tmp_path / 'nope' / 'val'} does not exist")
    ):
        make(tmp_path / "nope")


def test_missing_train_folder(data_dir):
    shutil.rmtree(data_dir / "train")
    make(data_dir, stage="validate")  # validation alone needs no training folder
    with pytest.raises(FileNotFoundError, match=r"ImageNet split folder .*train does not exist\. Expected layout"):
        make(data_dir)


def test_split_without_class_folders(data_dir):
    shutil.rmtree(data_dir / "val")
    (data_dir / "val").mkdir()
    (data_dir / "val" / "loose.JPEG").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"ImageNet split folder .*val holds no class folders"):
        make(data_dir)


def test_empty_class_folder(data_dir):
    for file in (data_dir / "val" / "n00000001").iterdir():
        file.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"Expected every class folder in .*val to hold at least one image .*n00000001"
    ):
        make(data_dir)


def test_train_and_val_classes_must_agree(data_dir):
    (data_dir / "train" / "n00000002").rename(data_dir / "train" / "n00000009")
    message = "to have the same class folders, but got ['n00000009'] only in train and ['n00000002'] only in val"
    with pytest.raises(ValueError, match=re.escape(message)):
        make(data_dir)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_size": 0}, ValueError, "Expected `image_size` to be an int >= 1, but got 0."),
        (
            {"image_size": 224, "resize_size": 200},
            ValueError,
            "Expected `resize_size` to be >= `image_size` = 224, but got 200.",
        ),
        ({"num_classes": 1}, ValueError, "Expected `num_classes` to be an int >= 2, but got 1."),
        ({"batch_size": 1.5}, TypeError, "Expected `batch_size` to be an int >= 1, but got float 1.5."),
        ({"num_workers": -1}, ValueError, "Expected `num_workers` to be an int >= 0, but got -1."),
        ({"augment": 1}, TypeError, "Expected `augment` to be a bool, but got int 1."),
        ({"data_dir": None}, TypeError, "Expected `data_dir` to be a str or os.PathLike, but got NoneType None."),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ImageNetDataModule(**kwargs)
