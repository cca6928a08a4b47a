"""Small data modules with one defect each, for the bad-input probes (built by ``cmkd`` from their class path)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset


class TinyImages(LightningDataModule):
    """8 random 3x32x32 images of ``num_classes`` classes; subclasses break one thing."""

    def __init__(self, num_classes: int = 10, batch_size: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_size = batch_size

    def _images(self, n: int) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def _labels(self, n: int) -> torch.Tensor:
        return torch.arange(n) % self.num_classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self._images(8), self._labels(8)), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self._images(4), self._labels(4)), batch_size=self.batch_size)


class EmptyTrainSet(TinyImages):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self._images(0), self._labels(0)), batch_size=self.batch_size)


class LabelsOutOfRange(TinyImages):
    def _labels(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.num_classes + 3)


class NaNImages(TinyImages):
    def _images(self, n: int) -> torch.Tensor:
        images = super()._images(n)
        images[:, 0, 0, 0] = float("nan")
        return images
