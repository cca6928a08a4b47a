"""Small modules, data and trainers shared by the callback tests (CPU, composed digits, 100 classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import KDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from datamodules import ComposedDigitsDataModule


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
        lr=0.05,
        lr_schedule="none",
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
