"""LightningDataModules: composed UCI digits (offline default), CIFAR-10, CIFAR-100, CIFAR-100-C and ImageNet."""

from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CIFAR10CDataset, CIFAR10DataModule, CIFAR10Dataset
from datamodules.cifar100 import CIFAR100_MEAN, CIFAR100_STD, CIFAR100DataModule, CIFAR100Dataset
from datamodules.cifar100c import (
    CIFAR100C_CORRUPTIONS,
    CIFAR100C_EXTRA_CORRUPTIONS,
    CIFAR100CDataModule,
    CIFAR100CDataset,
)
from datamodules.composed_digits import ComposedDigitsDataModule
from datamodules.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10CDataset",
    "CIFAR10DataModule",
    "CIFAR10Dataset",
    "CIFAR100C_CORRUPTIONS",
    "CIFAR100C_EXTRA_CORRUPTIONS",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR100CDataModule",
    "CIFAR100CDataset",
    "CIFAR100DataModule",
    "CIFAR100Dataset",
    "ComposedDigitsDataModule",
    "ImageNetDataModule",
]
