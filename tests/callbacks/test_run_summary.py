"""RunSummary prints the run's results and files: compared with what the CSV logger recorded per epoch."""

from __future__ import annotations

import csv
import functools
import io
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from cmkd_lightning import DistillationModule
from cmkd_lightning.callbacks import RunSummary
from cmkd_lightning.losses import CMKDLoss
from datamodules import ComposedDigitsDataModule


def _data() -> ComposedDigitsDataModule:
    return ComposedDigitsDataModule(train_size=256, val_size=128, test_size=128, batch_size=64, seed=0)


def _trainer(tmp_path, summary: RunSummary, epochs: int = 3, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[
            summary,
            ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc_top1", mode="max", save_last=True),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _val_epochs(log_dir) -> list[dict[str, float]]:
    with open(f"{log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc_top1")]
    return [{k: float(v) for k, v in r.items() if v} for r in rows]


@pytest.mark.slow
def test_fit_summary_matches_the_logged_epochs(tmp_path):
    L.seed_everything(0)
    stream = io.StringIO()
    summary = RunSummary(stream=stream)
    module = DistillationModule(
        "digits_student",
        teacher="digits_teacher",
        losses=[CMKDLoss()],
        num_classes=100,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=None,
    )
    trainer = _trainer(tmp_path, summary)
    trainer.fit(module, _data())
    text = stream.getvalue()
    epochs = _val_epochs(trainer.logger.log_dir)
    assert len(epochs) == 3
    best = max(range(3), key=lambda i: epochs[i]["val/acc_top1"])
    result = summary.summary
    assert result["stage"] == "fit" and result["epochs"] == 3
    assert result["best"]["epoch"] == best + 1 and result["last"]["epoch"] == 3
    assert result["best"]["acc_top1"] == pytest.approx(epochs[best]["val/acc_top1"], abs=1e-6)
    assert result["last"]["acc_top5"] == pytest.approx(epochs[-1]["val/acc_top5"], abs=1e-6)
    # The printed table holds the same numbers, in percent.
    assert f"best (epoch {best + 1})" in text and "last (epoch 3)" in text
    assert f"{100 * epochs[best]['val/acc_top1']:.2f}" in text
    assert f"{100 * epochs[-1]['val/teacher_acc_top1']:.2f}" in text
    for component in ("loss", "ce", "cmkd/loss", "cmkd/pearson_loss", "cmkd/spearman_loss", "cmkd/hard_fraction"):
        assert f"  {component} " in text
    # loss terms and diagnostics (docs/METRICS.md) are printed and kept apart
    assert {"loss", "ce", "cmkd/loss", "cmkd/pearson_loss", "cmkd/spearman_loss"} == set(result["losses"])
    assert {"cmkd/hard_fraction", "cmkd/teacher_entropy"} == set(result["diagnostics"])
    assert text.index("losses, last epoch") < text.index("diagnostics, last epoch")
    assert result["losses"]["ce"]["val"] == pytest.approx(epochs[-1]["val/ce"], abs=1e-6)
    # One line per epoch, as there is no progress bar.
    assert [line.split("  ")[0] for line in text.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]
    paths = result["paths"]
    checkpoint = trainer.checkpoint_callback
    assert paths["best checkpoint (val/acc_top1)"] == checkpoint.best_model_path
    assert paths["last checkpoint"] == checkpoint.last_model_path
    assert paths["CSVLogger logs"] == trainer.logger.log_dir
    assert f"best checkpoint (val/acc_top1): {checkpoint.best_model_path}" in text
    assert "cmkd fit finished: 3 epoch(s)" in text


@pytest.mark.slow
def test_validate_and_test_summaries(tmp_path):
    L.seed_everything(0)
    stream = io.StringIO()
    summary = RunSummary(stream=stream, epoch_lines=False)
    module = DistillationModule("digits_student", num_classes=100, lr_scheduler=None)
    trainer = _trainer(tmp_path, summary, epochs=1)
    data = _data()
    trainer.fit(module, data)
    assert "epoch 1/1" not in stream.getvalue()  # epoch lines switched off
    validated = trainer.validate(module, data, verbose=False)[0]
    assert summary.summary["stage"] == "validate"
    assert summary.summary["val"]["acc_top1"] == pytest.approx(validated["val/acc_top1"])
    assert "cmkd validate finished" in stream.getvalue()
    tested = trainer.test(module, data, verbose=False)[0]
    assert summary.summary["stage"] == "test"
    assert summary.summary["test"]["acc_top1"] == pytest.approx(tested["test/acc_top1"])
    assert re.search(rf"test Top-1 %\s+{100 * tested['test/acc_top1']:.2f}\n", stream.getvalue())
    assert "checkpoint" not in summary.summary["paths"]  # only `fit` reports checkpoints


def test_no_checkpointing_is_said_plainly(tmp_path):
    stream = io.StringIO()
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        callbacks=[RunSummary(stream=stream)],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(DistillationModule("digits_student", num_classes=100), _data())
    assert "checkpoint: none saved (checkpointing is off)" in stream.getvalue()


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"Expected `epoch_lines` to be a bool or None, but got 'yes'"):
        RunSummary(epoch_lines="yes")
