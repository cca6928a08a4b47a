"""Section C: ``DistillationModule`` under ``Trainer`` vs a plain PyTorch loop doing the same work.

Both runs use the same module construction (same seed, so the same initial student and teacher), the same
``DataLoader`` over the same composed-digits tensors (no shuffling), the same optimiser (the module's own
``configure_optimizers``), the same loss code (``module.compute_losses``), the same top-1/top-5 metric updates and
the same number of steps. What the plain loop does *not* do is Lightning's: the loop and its hooks, the optimiser
closure, ``self.log`` of every loss component, and the module's finiteness check (one host sync per step).

Throughput is measured over the same window in both: from the start of step ``warmup`` (batch already loaded) to
the end of the last step, data loading of the later batches included. Plain and Lightning runs alternate; the
ratio (Lightning images/s over plain images/s) is the median over rounds.

A third, diagnostic runner is the same Lightning run with ``self.log`` turned into a no-op (a subclass defined
here, not a library option): the gap between it and the full Lightning run is the cost of logging.
"""

from __future__ import annotations

import cProfile
import logging
import pstats
import statistics
import time
from typing import Any

import torch
from _timing import now, paired_ratio
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, KDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from datamodules.composed_digits import ComposedDigitsDataModule

TARGET = 0.95
BATCH = 128


class _Window(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start = now(self.device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.steps - 1:
            self.end = now(self.device)


class _NoLogModule(DistillationModule):
    """Diagnostic only: ``DistillationModule`` whose ``self.log`` does nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


def _module(loss: str, no_log: bool = False) -> DistillationModule:
    torch.manual_seed(0)
    if loss == "KD":
        losses, weights, ce = [KDLoss(temperature=4.0)], [0.9], 0.1
    else:
        losses, weights, ce = [CMKDLoss(temperature=4.0)], [1.0], 1.0
    cls = _NoLogModule if no_log else DistillationModule
    return cls(
        digits_student(100), digits_teacher(100), losses=losses, loss_weights=weights, ce_weight=ce,
        lr_scheduler=None,
    )


def _plain(loss: str, loader: DataLoader, warmup: int, steps: int, device: torch.device) -> float:
    module = _module(loss).to(device)
    module.train()
    optimizer = module.configure_optimizers()
    start = 0.0
    it = iter(loader)
    for i in range(steps):
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        if i == warmup:
            start = now(device)
        student_logits = module.student(x)
        teacher_logits = module.teacher_forward(x)
        terms = module.compute_losses(student_logits, teacher_logits, y)
        module.epoch_metrics["train_top1"].update(student_logits.detach(), y)
        module.epoch_metrics["train_top5"].update(student_logits.detach(), y)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    return now(device) - start


def _trainer(device: torch.device, steps: int, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def _lightning(
    loss: str, loader: DataLoader, warmup: int, steps: int, device: torch.device, no_log: bool = False
) -> tuple[float, float]:
    window = _Window(warmup, steps, device)
    trainer = _trainer(device, steps, [window])
    start = time.perf_counter()
    trainer.fit(_module(loss, no_log), loader)
    return window.end - window.start, time.perf_counter() - start


def _profile_lightning(loss: str, loader: DataLoader, steps: int, device: torch.device) -> dict[str, Any]:
    """cProfile of a Lightning run: top functions by own time, and the cumulative time of known suspects."""
    profiler = cProfile.Profile()
    trainer = _trainer(device, steps, [])
    module = _module(loss)
    profiler.enable()
    trainer.fit(module, loader)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    suspects = {
        "LightningModule.log": ("lightning/pytorch/core/module.py", "log"),
        "check_finite guard": ("cmkd_lightning/_guard.py", "raise_if_not_finite"),
        "DistillationModule.compute_losses": ("cmkd_lightning/module.py", "compute_losses"),
        "DistillationModule.training_step": ("cmkd_lightning/module.py", "training_step"),
        "torchmetrics Metric.update (wrapped)": ("torchmetrics/metric.py", "wrapped_func"),
        "optimizer step (torch SGD.step)": ("torch/optim/sgd.py", "step"),
        "autograd backward": ("torch/autograd/__init__.py", "backward"),
        "Trainer.fit": ("lightning/pytorch/trainer/trainer.py", "fit"),
    }
    cumulative = {}
    for label, (path, func) in suspects.items():
        cum = [v[3] for (file, _, name), v in entries.items() if file.endswith(path) and name == func]
        cumulative[label] = {"s_total": sum(cum), "ms_per_step": 1e3 * sum(cum) / steps}
    return {
        "steps": steps,
        "total_own_time_s": total,
        "top_by_own_time": [
            {"function": f"{file.split('site-packages/')[-1]}:{line}({name})", "own_s": v[2], "cum_s": v[3],
             "calls": v[1]}
            for (file, line, name), v in top
        ],
        "cumulative": cumulative,
    }


def run(device: torch.device, quick: bool, threads: int, profile: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warmup, steps, rounds = (5, 40, 3) if quick else (10, 150, 5)
    dm = ComposedDigitsDataModule(num_digits=2, train_size=steps * BATCH, val_size=64, test_size=64, batch_size=BATCH)
    dm.setup("fit")
    loader = DataLoader(dm.datasets["train"], batch_size=BATCH, shuffle=False, num_workers=0)
    images = (steps - warmup) * BATCH
    result: dict[str, Any] = {
        "models": "digits_teacher -> digits_student (composed digits, 1x8x16, 100 classes)",
        "batch": BATCH,
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "runs": {},
        "profiles": {},
    }
    kinds = ("plain", "lightning", "lightning_no_log")
    for loss in ("KD", "CMKD"):
        times: dict[str, list[float]] = {k: [] for k in kinds}
        fit_t: list[float] = []
        for r in range(rounds):
            for kind in kinds[r % 3:] + kinds[: r % 3]:
                if kind == "plain":
                    times[kind].append(_plain(loss, loader, warmup, steps, device))
                else:
                    window, whole = _lightning(loss, loader, warmup, steps, device, no_log=kind == "lightning_no_log")
                    times[kind].append(window)
                    if kind == "lightning":
                        fit_t.append(whole)
        med = {k: statistics.median(v) for k, v in times.items()}
        n_timed = steps - warmup
        # plain time / Lightning time = Lightning images/s / plain images/s
        ratio = paired_ratio(times["plain"], times["lightning"])
        row = {
            "plain_images_per_s": images / med["plain"],
            "lightning_images_per_s": images / med["lightning"],
            "plain_step_ms": 1e3 * med["plain"] / n_timed,
            "lightning_step_ms": 1e3 * med["lightning"] / n_timed,
            "lightning_no_log_step_ms": 1e3 * med["lightning_no_log"] / n_timed,
            "overhead_ms_per_step": 1e3 * (med["lightning"] - med["plain"]) / n_timed,
            "logging_ms_per_step": 1e3 * (med["lightning"] - med["lightning_no_log"]) / n_timed,
            "no_log_ratio": paired_ratio(times["plain"], times["lightning_no_log"])["ratio"],
            "lightning_fit_wall_s": statistics.median(fit_t),
            "times_s": times,
            **ratio,
            "target": TARGET,
        }
        result["runs"][loss] = row
        if profile and (row["ratio"] < TARGET or not quick):
            result["profiles"][loss] = _profile_lightning(loss, loader, steps, device)
    return result
