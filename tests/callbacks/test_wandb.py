"""The images and the robustness table reach an offline W&B run (WANDB_MODE=offline, no network)."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cmkd_lightning.callbacks import CorruptionRobustness, EmbeddingProjection, LogitCorrelationHeatmap
from tests._fakes import write_fake_cifar100c
from tests.callbacks._helpers import cifar_module, corrupted, cpu_trainer

wandb = pytest.importorskip("wandb")


def test_images_and_table_in_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    root = write_fake_cifar100c(tmp_path / "c100c", corruptions=("fog",), n_per_severity=2)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 4)
    loader = DataLoader(data, batch_size=8)
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    callbacks = [
        LogitCorrelationHeatmap(),
        EmbeddingProjection(num_samples=16, num_threads=1),
        CorruptionRobustness(corrupted(root, ["fog"], [1, 2]), evaluate_teacher=True),
    ]
    try:
        trainer = cpu_trainer(tmp_path, callbacks, logger=logger, limit_train_batches=1)
        trainer.fit(cifar_module(), train_dataloaders=loader, val_dataloaders=loader)
        trainer.test(trainer.lightning_module, dataloaders=loader, verbose=False)
        media = logger.experiment.dir
    finally:
        wandb.finish()
    media = Path(media) / "media"
    assert len(list((media / "images" / "heatmap").glob("logit_correlation_*.png"))) == 1
    assert len(list((media / "images" / "embedding").glob("tsne_*.png"))) == 1
    (table,) = (media / "table" / "robustness").glob("table_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["model", "clean", "fog", "fog_drop", "mean", "mean_drop"]
    assert [row[0] for row in content["data"]] == ["student", "teacher"]
    # Files go to the run's own folder (beside its checkpoints), never to the save_dir every W&B run shares.
    own = tmp_path / str(logger.name) / str(logger.version)
    assert (own / "figures" / "logit_correlation_epoch001.png").is_file()
    assert (own / "robustness.csv").is_file()
    assert not (tmp_path / "figures").exists() and not (tmp_path / "robustness.csv").exists()


def test_two_wandb_runs_in_one_save_dir_keep_their_own_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import WandbLogger

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 4)
    loader = DataLoader(data, batch_size=8)
    folders = []
    for _ in range(2):
        logger = WandbLogger(offline=True, save_dir=tmp_path)
        try:
            trainer = cpu_trainer(tmp_path, [LogitCorrelationHeatmap()], logger=logger, limit_train_batches=1)
            trainer.fit(cifar_module(), train_dataloaders=loader, val_dataloaders=loader)
            folders.append(tmp_path / str(logger.name) / str(logger.version) / "figures")
        finally:
            wandb.finish()
    assert folders[0] != folders[1]
    for folder in folders:
        assert [p.name for p in folder.glob("*.png")] == ["logit_correlation_epoch001.png"]
