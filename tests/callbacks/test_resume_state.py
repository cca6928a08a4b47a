"""Callback history is saved in the trainer's checkpoint and restored on resume (state_dict / load_state_dict)."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cmkd_lightning.callbacks import CorrelationMonitor
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module


def _fit(tmp_path, callbacks, max_epochs, ckpt_path=None):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = cpu_trainer(
        tmp_path, [*callbacks, checkpoint], max_epochs=max_epochs, enable_checkpointing=True, limit_val_batches=1
    )
    trainer.fit(digits_module(), datamodule=digits_data(), ckpt_path=ckpt_path)
    return tmp_path / "ckpt" / "last.ckpt"


def test_correlation_monitor_history_survives_a_resume(tmp_path):
    first = CorrelationMonitor()
    last = _fit(tmp_path, [first], max_epochs=1)
    assert [h["epoch"] for h in first.history] == [1]
    saved = torch.load(last, weights_only=False)["callbacks"]
    assert [state["history"][0]["epoch"] for key, state in saved.items() if "CorrelationMonitor" in key] == [1]

    resumed = CorrelationMonitor()
    _fit(tmp_path, [resumed], max_epochs=2, ckpt_path=last)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]


def test_figure_callbacks_keep_their_files_across_a_resume(tmp_path):
    pytest.importorskip("matplotlib")
    from cmkd_lightning.callbacks import LogitCorrelationHeatmap

    first = LogitCorrelationHeatmap(dirpath=tmp_path / "figs")
    last = _fit(tmp_path, [first], max_epochs=1)
    resumed = LogitCorrelationHeatmap(dirpath=tmp_path / "figs")
    _fit(tmp_path, [resumed], max_epochs=2, ckpt_path=last)
    assert [p.name for p in resumed.figure_paths] == [
        "logit_correlation_epoch001.png",
        "logit_correlation_epoch002.png",
    ]
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_embedding_projection_state_round_trip(tmp_path):
    pytest.importorskip("sklearn")
    from cmkd_lightning.callbacks import EmbeddingProjection

    callback = EmbeddingProjection()
    callback.figure_paths = [tmp_path / "tsne_end.png"]
    restored = EmbeddingProjection()
    restored.load_state_dict(callback.state_dict())
    assert restored.figure_paths == [tmp_path / "tsne_end.png"]
