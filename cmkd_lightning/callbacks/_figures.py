"""Where callbacks write their files, and how a saved figure reaches the attached loggers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from cmkd_lightning.errors import OutputWriteError

if TYPE_CHECKING:  # matplotlib is the `figures` extra; the callbacks that draw import it
    from matplotlib.figure import Figure


def run_directory(trainer: Trainer, dirpath: Path | None, subfolder: str = "") -> Path:
    """``dirpath`` if given, else ``<run dir>/<subfolder>``.

    The run dir is this run's own folder: under a W&B logger ``<save_dir>/<project>/<run id>`` (where Lightning
    puts the run's checkpoints; ``trainer.log_dir`` is the ``save_dir`` every W&B run shares), else
    ``trainer.log_dir`` (the CSV / TensorBoard logger's versioned folder), else ``trainer.default_root_dir``.
    It is broadcast from rank 0, so call this on every process.
    """
    if dirpath is not None:
        return dirpath
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        own = None
        if trainer.is_global_zero:
            own = str(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version))
        return Path(trainer.strategy.broadcast(own)) / subfolder
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir) / subfolder


def epoch_number(trainer: Trainer) -> int:
    """The epoch a record, figure or file belongs to, counted from 1 as a person counts (and as ``RunSummary``).

    During ``fit`` the running epoch (``current_epoch + 1``: the first epoch is 1); in ``validate`` / ``test`` the
    number of epochs the weights were trained for (``current_epoch``, restored from the checkpoint).
    """
    return trainer.current_epoch + 1 if trainer.state.fn == TrainerFn.FITTING else trainer.current_epoch


def running_epoch(trainer: Trainer) -> str:
    """``epoch k of N`` for the epoch in progress (counted from 1, as the bar and ``RunSummary``), or ``epoch k``."""
    limit = trainer.max_epochs
    total = f" of {limit}" if limit is not None and limit > 0 else ""
    return f"epoch {trainer.current_epoch + 1}{total}"


def _number(value: float) -> str:
    return f"{value:g}"


def describe_method(pl_module: LightningModule) -> str:
    """A one-line name of the training method for figure titles, e.g. ``"digits_student: CE 1 + CMKD 1 (T=4)"``.

    For a module with ``student``, ``losses``, ``loss_weights`` and ``ce_weight`` (as
    :class:`~cmkd_lightning.DistillationModule`): the student's class or zoo name, then the weighted terms; a
    loss's ``temperature`` is shown when it has one. Other modules: their class name.

    Example:
        >>> from cmkd_lightning import DistillationModule
        >>> from cmkd_lightning.losses import KDLoss
        >>> m = DistillationModule("digits_student", teacher="digits_teacher", losses=[KDLoss()], num_classes=100)
        >>> describe_method(m)
        'digits_student (DigitsCNN): CE 0.1 + KD 0.9 (T=4)'
    """
    losses = getattr(pl_module, "losses", None)
    student = getattr(pl_module, "student", None)
    if losses is None or student is None:
        return type(pl_module).__name__
    hparams = getattr(pl_module, "hparams", {})
    name = hparams.get("student") if isinstance(hparams.get("student"), str) else None
    network = type(student).__name__
    who = f"{name} ({network})" if name else network
    terms = []
    ce_weight = float(getattr(pl_module, "ce_weight", 1.0))
    if ce_weight:
        terms.append(f"CE {_number(ce_weight)}")
    weights = list(getattr(pl_module, "loss_weights", None) or [1.0] * len(losses))
    for loss, weight in zip(losses, weights):
        label = type(loss).__name__.removesuffix("Loss") or type(loss).__name__
        temperature = getattr(loss, "temperature", None)
        suffix = f" (T={_number(float(temperature))})" if isinstance(temperature, (int, float)) else ""
        terms.append(f"{label} {_number(float(weight))}{suffix}")
    if getattr(pl_module, "teacher", None) is None:
        terms.append("no teacher")
    return f"{who}: {' + '.join(terms)}"


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG to ``path`` (folders created, atomically) and return ``path``.

    Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas), never ``pyplot``: no global
    backend switch, no window, nothing left open.
    """
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(partial, dpi=dpi, bbox_inches="tight", facecolor="white", format="png")
        os.replace(partial, path)  # a reader never sees half a file; a failed write leaves the old one
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise OutputWriteError(
            f"Could not write the figure '{path}': {err.strerror or err}. Free some space or make the folder "
            "writable (the callback's `dirpath`) and run again."
        ) from err
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
