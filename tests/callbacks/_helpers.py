"""Small modules, data and trainers shared by the callback tests (CPU, composed digits, 100 classes; CIFAR-100-C)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import TensorDataset

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import KDLoss
from cmkd_lightning.models import create_model
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from datamodules import ComposedDigitsDataModule
from datamodules.cifar100 import cifar100_test_transform
from datamodules.cifar100c import CIFAR100CDataset
from tests._fakes import write_fake_cifar100c


def sgd_without_schedule(lr: float = 0.05) -> dict[str, Any]:
    """DistillationModule arguments for plain SGD at ``lr`` without a schedule (either optimiser API)."""
    if "lr" in inspect.signature(DistillationModule).parameters:
        return {"lr": lr, "lr_schedule": "none"}
    return {"optimizer": lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9), "lr_scheduler": None}


def digits_data(**kwargs: Any) -> ComposedDigitsDataModule:
    sizes = {"train_size": 256, "val_size": 128, "test_size": 128, "batch_size": 64}
    sizes.update(kwargs)
    return ComposedDigitsDataModule(**sizes)


def digits_module(teacher: bool = True) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(
        student=digits_student(100),
        teacher=digits_teacher(100) if teacher else None,
        losses=[KDLoss()] if teacher else None,
        **sgd_without_schedule(0.05),
    )


def cpu_trainer(tmp_path: Path, callbacks: list[Callback], logger: Any = "csv", **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 2,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }
    options.update(kwargs)
    return Trainer(logger=CSVLogger(tmp_path) if logger == "csv" else logger, callbacks=callbacks, **options)


@torch.no_grad()
def split_logits(module: DistillationModule, datamodule: ComposedDigitsDataModule, split: str = "val"):
    """Student logits, teacher logits (None without teacher) and targets over a whole split, in eval mode."""
    module.eval()
    datamodule.setup("fit")
    xs, ys = datamodule.datasets[split].tensors
    student = module.student(xs)
    teacher = module.teacher(xs) if module.teacher is not None else None
    return student, teacher, ys


# CIFAR-sized modules and fake CIFAR-100-C files for the CorruptionRobustness tests (single process and DDP).
CORRUPTIONS = ("gaussian_noise", "fog")


def cifar_module() -> DistillationModule:
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=100), create_model("resnet8", num_classes=100)
    return DistillationModule(student=student, teacher=teacher, losses=[KDLoss()], **sgd_without_schedule()).eval()


@torch.no_grad()
def predictions(network, root, corruption):
    """Predicted class of every row of <corruption>.npy, severity by severity (row order of the file)."""
    return torch.cat(
        [
            network(
                torch.stack([x for x, _ in CIFAR100CDataset(root, corruption, s, cifar100_test_transform())])
            ).argmax(-1)
            for s in range(1, 6)
        ]
    )


def corrupted(root, corruptions, severities, batch_size=256):
    """The data module CorruptionRobustness evaluates: the fake CIFAR-100-C files, read in this process."""
    from datamodules import CIFAR100CDataModule

    return CIFAR100CDataModule(
        root, corruptions=list(corruptions), severities=list(severities), batch_size=batch_size, num_workers=0
    )


def fake_data(tmp_path, module):
    """Fake CIFAR-100-C whose labels make the student right on 3 of 4 gaussian_noise images of each severity."""
    root = write_fake_cifar100c(tmp_path / "c100c", corruptions=CORRUPTIONS, n_per_severity=4)
    labels = np.load(root / "labels.npy").astype(np.int64)
    hits = predictions(module.student, root, "gaussian_noise").numpy()
    keep = np.arange(20) % 4 != 3
    labels[keep] = hits[keep]
    np.save(root / "labels.npy", labels.astype(np.uint8))
    torch.manual_seed(1)
    images = torch.randn(12, 3, 32, 32)
    with torch.no_grad():
        clean_labels = module.student(images).argmax(-1)
    clean_labels[::3] = (clean_labels[::3] + 1) % 100  # student right on 8 of 12 clean images
    return root, TensorDataset(images, clean_labels)
