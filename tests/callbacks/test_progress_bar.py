"""EpochProgressBar counts epochs from 1, out of max_epochs, as RunSummary and the figure files do."""

from lightning.pytorch import Callback

from cmkd_lightning.callbacks.progress_bar import EpochProgressBar
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module


class _Descriptions(Callback):
    def __init__(self, bar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, *args):
        self.seen.append(self.bar.train_progress_bar.desc.removesuffix(": "))  # tqdm adds ": "


def _descriptions(tmp_path, max_epochs):
    bar = EpochProgressBar()
    probe = _Descriptions(bar)
    trainer = cpu_trainer(tmp_path, [bar, probe], max_epochs=max_epochs, enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(digits_module(), datamodule=digits_data())
    return probe.seen


def test_training_description_counts_epochs_from_one(tmp_path):
    assert _descriptions(tmp_path, 2) == ["Epoch 1/2", "Epoch 1/2", "Epoch 2/2", "Epoch 2/2"]
