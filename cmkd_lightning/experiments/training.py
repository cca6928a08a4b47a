"""The one trainer and evaluation set-up of ``cmkd-quickstart`` and ``cmkd-compare`` on composed digits.

A teacher is trained with cross-entropy (:func:`train_teacher`); every student of a :class:`~.methods.Method` is
built from the same seed and trained on the same batches (:func:`fit_student`), then tested against the labels and
the teacher (:func:`evaluate`). :func:`isolated_run` scopes what a run changes in the process (torch's thread
count, the warning filters, the random states and Lightning's seed variables) to the run.
"""

from __future__ import annotations

import functools
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cmkd_lightning.experiments.methods import Method
from cmkd_lightning.experiments.outputs import METRICS, atomic_write
from cmkd_lightning.functional import spearman_corr
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.models import create_model
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.runtime import cpu_threads
from datamodules import ComposedDigitsDataModule

BATCH_SIZE = 128
TEACHER_SEED = 1234
STUDENT_LR = 0.05
# Environment variables `L.seed_everything` sets; restored by `isolated_run`.
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextmanager
def isolated_run(threads: int | None = None) -> Iterator[int]:
    """Run a block with ``threads`` torch threads; restore the process's state on exit, also after an error.

    Restored: torch's intra-op thread count, the warning filters (``warnings.catch_warnings``), the random states
    of Python, NumPy and torch (CPU, and CUDA once initialised) and the ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS``
    variables ``seed_everything`` sets. Inside, Lightning's advice to use more data-loader workers is ignored (the
    in-memory digits load in the main process on purpose).

    Args:
        threads: torch threads inside the block; ``None``: ``$CMKD_CPU_THREADS``, else 1; ``0``: torch's default.

    Yields:
        The thread count in use inside the block.

    Example:
        >>> before = torch.get_num_threads()
        >>> with isolated_run(1) as n:
        ...     n
        1
        >>> torch.get_num_threads() == before
        True
    """
    count = cpu_threads(threads)
    saved_threads = torch.get_num_threads()
    saved_env = {name: os.environ.get(name) for name in _SEED_ENV}
    # Lightning's `isolate_rng` does not restore after an exception, hence the states are kept here.
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            if count > 0:
                torch.set_num_threads(count)
            yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved_threads)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def digits_data(num_digits: int, train_size: int, eval_size: int, seed: int = 0) -> ComposedDigitsDataModule:
    """The composed-digits task of the tools, set up: ``eval_size`` validation and test images each, batch 128."""
    data = ComposedDigitsDataModule(
        num_digits=num_digits,
        train_size=train_size,
        val_size=eval_size,
        test_size=eval_size,
        batch_size=BATCH_SIZE,
        seed=seed,
    )
    data.setup()
    return data


def make_trainer(
    epochs: int,
    out: Path,
    *,
    validate: bool = False,
    progress: bool = False,
    logger: Any = False,
    callbacks: Sequence[Any] = (),
) -> L.Trainer:
    """One CPU process, no checkpoints, no sanity check; ``validate=False`` also skips the validation epochs.

    Args:
        epochs: ``max_epochs``.
        out: Lightning's ``default_root_dir``.
        validate: run the validation loop after each epoch (the quickstart's figure callbacks read it).
        progress: show a progress bar (pass an ``EpochRichProgressBar`` in ``callbacks`` for rich's).
        logger: a Lightning logger, or ``False``.
        callbacks: Lightning callbacks.
    """
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        default_root_dir=out,
    )


def train_teacher(
    data: ComposedDigitsDataModule,
    epochs: int,
    out: Path,
    arch: str = "digits_teacher",
    seed: int = TEACHER_SEED,
    *,
    cache: bool = True,
    validate: bool = False,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> nn.Module:
    """Train a teacher with cross-entropy (SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine), in eval mode.

    With ``cache``, load ``<out>/teacher-<arch>-<k>d-<train size>-<E>ep.pt`` when it exists, else write it after
    training, atomically (a killed run leaves no partial teacher).
    """
    path = out / f"teacher-{arch}-{data.num_digits}d-{data.sizes['train']}-{epochs}ep.pt"
    if cache and path.is_file():
        teacher = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
        teacher.load_state_dict(torch.load(path, weights_only=True))
        return teacher.eval()
    L.seed_everything(seed, verbose=False)  # before the network is built: ``seed`` fixes its initial weights
    teacher = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    module = DistillationModule(teacher, num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    make_trainer(epochs, out, validate=validate, progress=progress, callbacks=callbacks).fit(module, data)
    if cache:
        atomic_write(path, lambda tmp: torch.save(teacher.state_dict(), tmp))
    return teacher.eval()


def student_module(
    method: Method,
    seed: int,
    data: ComposedDigitsDataModule,
    teacher: nn.Module,
    arch: str = "digits_student",
    lr: float = STUDENT_LR,
) -> DistillationModule:
    """The module of one student run: ``seed`` fixes the student's initial weights (the same for every method).

    SGD (``lr``, momentum 0.9, weight decay 5e-4) with a cosine schedule; the method's losses, loss weights and
    CE weight; no teacher for a method without losses.
    """
    L.seed_everything(seed, verbose=False)
    student = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    losses = method.losses()
    for loss in losses:  # feature losses size their connectors from one sample of the task's images
        if isinstance(loss, FeatureDistillationLoss):
            loss.input_shape = list(data.image_shape)
    return DistillationModule(
        student,
        teacher=teacher if losses else None,
        losses=losses,
        loss_weights=method.loss_weights if losses else None,
        ce_weight=method.ce_weight,
        num_classes=data.num_classes,
        optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=WarmupCosine,
    )


def fit_student(
    method: Method,
    seed: int,
    data: ComposedDigitsDataModule,
    teacher: nn.Module,
    epochs: int,
    out: Path,
    arch: str = "digits_student",
    lr: float = STUDENT_LR,
    logger: Any = False,
    *,
    validate: bool = False,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> DistillationModule:
    """Train one student (:func:`student_module`) for ``epochs``; the data module fixes the batch order.

    ``logger``: the Lightning logger of the run (default: none); ``validate``, ``progress``, ``callbacks``: as in
    :func:`make_trainer`.
    """
    module = student_module(method, seed, data, teacher, arch, lr)
    trainer = make_trainer(epochs, out, validate=validate, progress=progress, logger=logger, callbacks=callbacks)
    trainer.fit(module, data)
    return module


@torch.no_grad()
def evaluate(student: nn.Module, teacher: nn.Module, loader: Any) -> dict[str, float]:
    """Test metrics of ``student``: Top-1, Top-5 (%), agreement with the teacher's Top-1 (%) and mean Spearman.

    ``spearman``: the mean over the images of the Spearman correlation between the student's and the teacher's
    logits. Both networks are put in eval mode.

    Example:
        >>> net = torch.nn.Linear(4, 3)
        >>> loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> metrics = evaluate(net, net, loader)
        >>> metrics["agreement"], round(metrics["spearman"], 4)
        (100.0, 1.0)
    """
    student.eval()
    teacher.eval()
    zs, zt, ys = [], [], []
    for x, y in loader:
        zs.append(student(x))
        zt.append(teacher(x))
        ys.append(y)
    s, t, y = torch.cat(zs), torch.cat(zt), torch.cat(ys)
    k = min(5, s.shape[1])
    return {
        "top1": 100 * float((s.argmax(1) == y).float().mean()),
        "top5": 100 * float((s.topk(k, dim=1).indices == y[:, None]).any(1).float().mean()),
        "agreement": 100 * float((s.argmax(1) == t.argmax(1)).float().mean()),
        "spearman": float(spearman_corr(s, t).mean()),
    }


def train_student(
    method: Method,
    seed: int,
    data: ComposedDigitsDataModule,
    teacher: nn.Module,
    epochs: int,
    out: Path,
    wandb: dict[str, Any] | None = None,
    *,
    validate: bool = False,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """:func:`fit_student`, then :func:`evaluate` on the test split: one row of a results table.

    Returns:
        ``{"method", "seed", "top1", "top5", "agreement", "spearman", "seconds"}`` (training seconds), plus
        ``wandb_run_id`` with ``wandb``.

    ``wandb``: ``{"project": ..., "group": ..., "config": {...}}`` logs the run as a W&B run of its own
    (``<method>-seed<seed>``, the config given, the test metrics in its summary), finished before this returns.
    """
    logger: Any = False
    if wandb is not None:
        from lightning.pytorch.loggers import WandbLogger

        from cmkd_lightning.cli import ensure_wandb_mode

        ensure_wandb_mode()
        logger = WandbLogger(
            project=wandb["project"],
            group=wandb["group"],
            name=f"{method.name}-seed{seed}",
            save_dir=str(out),
            config={"method": method.name, "seed": seed, **wandb.get("config", {})},
        )
    start = time.perf_counter()
    try:
        module = fit_student(
            method,
            seed,
            data,
            teacher,
            epochs,
            out,
            logger=logger,
            validate=validate,
            progress=progress,
            callbacks=callbacks,
        )
        seconds = time.perf_counter() - start
        row = {"method": method.name, "seed": seed, **evaluate(module, teacher, data.test_dataloader())}
        row["seconds"] = seconds
    except BaseException:
        if logger:
            logger.experiment.finish(exit_code=1)
        raise
    if logger:
        row["wandb_run_id"] = str(logger.experiment.id)
        logger.experiment.summary.update({f"test/{k}": row[k] for k in METRICS if k in row})
        logger.experiment.finish()
    return row
