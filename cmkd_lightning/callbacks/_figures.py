"""Where callbacks write their files, and how a saved figure reaches the attached loggers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image


def run_directory(trainer: Trainer, dirpath: Path | None, subfolder: str = "") -> Path:
    """``dirpath`` if given, else ``<run dir>/<subfolder>``.

    The run dir is ``trainer.log_dir`` (the first logger's folder), else ``trainer.default_root_dir``.
    ``trainer.log_dir`` broadcasts from rank 0, so call this on every process.
    """
    if dirpath is not None:
        return dirpath
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir) / subfolder


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG to ``path`` (folders created) and return ``path``.

    Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas), never ``pyplot``: no global
    backend switch, no window, nothing left open.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def log_image_file(trainer: Trainer, key: str, path: Path) -> None:
    """Send the PNG at ``path`` to every W&B (``log_image``) and TensorBoard (``add_image``) logger attached.

    Other loggers get nothing; the file itself stays under the run directory. Call on global rank 0.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            logger.experiment.add_image(key, pixels, global_step=trainer.global_step, dataformats="HWC")
