"""ImageNet (ILSVRC-2012) from class-subfolder directories, with the standard ResNet recipe."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from lightning import LightningDataModule
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from cmkd_lightning.errors import DataNotFoundError, InvalidArgumentError
from cmkd_lightning.utilities.validation import check_bool, check_int, check_optional_bool, check_path
from datamodules._contrastive import check_negatives, with_contrast
from datamodules._io import SplitLoaders
from datamodules._synthetic import SyntheticImageDataset

#: Per-channel mean and std of the ImageNet training images (torchvision's values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUT = (
    "Expected layout: <data_dir>/train/<class>/*.JPEG and <data_dir>/val/<class>/*.JPEG with the same class "
    "folders (e.g. n01440764) in both; the validation images must be sorted into class folders (e.g. with "
    "the valprep.sh script of the PyTorch ImageNet example)."
)


def imagenet_train_transform(image_size: int = 224) -> Callable:
    """RandomResizedCrop(image_size) + RandomHorizontalFlip + ToTensor + Normalize(ImageNet mean/std)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet_eval_transform(image_size: int = 224, resize_size: int = 256) -> Callable:
    """Resize(resize_size) + CenterCrop(image_size) + ToTensor + Normalize(ImageNet mean/std)."""
    return transforms.Compose(
        [
            transforms.Resize(resize_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataNotFoundError(f"ImageNet split folder {split_dir} does not exist. {_LAYOUT}")
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise DataNotFoundError(f"ImageNet split folder {split_dir} holds no class folders. {_LAYOUT}")
    return classes


def _image_folder(split_dir: Path, transform: Callable) -> ImageFolder:
    try:
        return ImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as err:  # an empty class folder
        raise DataNotFoundError(
            f"Expected every class folder in {split_dir} to hold at least one image with one of the extensions "
            f"{', '.join(IMG_EXTENSIONS)}, but torchvision reported: {err}"
        ) from err


class ImageNetDataModule(SplitLoaders, LightningDataModule):
    """ImageNet with the training recipe of the CMKD paper (and torchvision's ResNet recipe).

    Training images get RandomResizedCrop(``image_size``) and a random horizontal flip; validation and test
    images Resize(``resize_size``) + CenterCrop(``image_size``); all are normalised with the ImageNet
    mean/std. Validation and test both read ``<data_dir>/val``. Under DDP, Lightning inserts the
    ``DistributedSampler`` itself, so ``batch_size`` is per device (the recipe's 512 = 4 GPUs × 128).

    Args:
        data_dir: directory holding ``train/`` and ``val/``, each with one sub-folder per class.
        batch_size: samples per batch and device.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
        pin_memory: pin host memory; None pins when CUDA is available.
        image_size: side of the crops fed to the network (224 in the recipe).
        resize_size: side of the shorter edge before the evaluation centre crop (256 in the recipe).
        num_classes: number of classes; checked against the class folders found at ``setup``.
        augment: apply the training augmentation (else training images get the evaluation transform).
        synthetic: serve deterministic random images of the real size through the real transforms instead of
            files (no download, no data directory); for smoke tests and device checks.
        synthetic_size: number of synthetic samples per split.
        contrastive_negatives: for CRD (:class:`~cmkd_lightning.losses.CRDLoss`): training batches become
            ``(images, targets, sample_index, contrast_index)`` with ``K`` negatives of other classes per sample
            (:class:`~datamodules._contrastive.ContrastiveSampleDataset`; the reference's 16,384).

    Attributes:
        num_classes: as given (1000 by default).
        image_shape: ``(3, image_size, image_size)``.

    Raises:
        FileNotFoundError: at ``setup`` if a split folder is missing, has no class folders or an empty one.
        ValueError: at ``setup`` if the number of class folders is not ``num_classes`` or ``train`` and
            ``val`` have different class folders.
    """

    EVAL_SET = "val_set"  # validation, test and predict read the validation split

    def __init__(
        self,
        data_dir: str | Path = "data/imagenet",
        batch_size: int = 128,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        num_classes: int = 1000,
        augment: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 1024,
        contrastive_negatives: int | None = None,
    ) -> None:
        super().__init__()
        self.contrastive_negatives = check_negatives(contrastive_negatives)
        self.data_dir = check_path(data_dir, "data_dir")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.num_workers = check_int(num_workers, "num_workers", minimum=0)
        self.pin_memory = check_optional_bool(pin_memory, "pin_memory")
        self.image_size = check_int(image_size, "image_size", minimum=1)
        self.resize_size = check_int(resize_size, "resize_size", minimum=1)
        if resize_size < image_size:
            raise InvalidArgumentError(
                f"Expected `resize_size` to be >= `image_size` = {image_size}, but got {resize_size}."
            )
        self.num_classes: int = check_int(num_classes, "num_classes", minimum=2)
        self.augment = check_bool(augment, "augment")
        self.synthetic = check_bool(synthetic, "synthetic")
        self.synthetic_size = check_int(synthetic_size, "synthetic_size", minimum=1)
        self.save_hyperparameters()
        self.image_shape: tuple[int, int, int] = (3, image_size, image_size)
        self.train_set: ImageFolder | None = None
        self.val_set: ImageFolder | None = None

    def _checked_classes(self, split: str) -> list[str]:
        classes = _class_folders(self.data_dir / split)
        if len(classes) != self.num_classes:
            raise InvalidArgumentError(
                f"Expected `num_classes` = {self.num_classes} class folders in {self.data_dir / split}, but "
                f"found {len(classes)}. Pass `num_classes={len(classes)}` for a subset of ImageNet."
            )
        return classes

    def setup(self, stage: str | None = None) -> None:
        """Index ``train`` (for ``fit``) and ``val`` (for every stage) and check their class folders."""
        if self.synthetic:
            self._setup_synthetic(stage)
            self.train_set = with_contrast(self.train_set, self.contrastive_negatives)
            return
        val_classes = self._checked_classes("val")
        if stage in (None, "fit") and self.train_set is None:
            train_classes = self._checked_classes("train")
            if train_classes != val_classes:
                only_train = sorted(set(train_classes) - set(val_classes))[:5]
                only_val = sorted(set(val_classes) - set(train_classes))[:5]
                raise InvalidArgumentError(
                    f"Expected {self.data_dir / 'train'} and {self.data_dir / 'val'} to have the same class "
                    f"folders, but got {only_train} only in train and {only_val} only in val (first 5 shown)."
                )
            train_tf = imagenet_train_transform(self.image_size) if self.augment else self._eval_transform()
            self.train_set = with_contrast(_image_folder(self.data_dir / "train", train_tf), self.contrastive_negatives)
        if self.val_set is None:
            self.val_set = _image_folder(self.data_dir / "val", self._eval_transform())

    def _setup_synthetic(self, stage: str | None) -> None:
        # raw images a little larger than the evaluation resize, as real photos are; same transforms as files
        side = self.resize_size + self.resize_size // 8
        make = functools.partial(SyntheticImageDataset, self.synthetic_size, self.num_classes, side, side)
        if stage in (None, "fit") and self.train_set is None:
            train_tf = imagenet_train_transform(self.image_size) if self.augment else self._eval_transform()
            self.train_set = make(transform=train_tf, seed=0)
        if self.val_set is None:
            self.val_set = make(transform=self._eval_transform(), seed=1)

    def _eval_transform(self) -> Callable:
        return imagenet_eval_transform(self.image_size, self.resize_size)
