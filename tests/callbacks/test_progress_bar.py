"""EpochProgressBar counts epochs from 1, out of max_epochs, as RunSummary and the figure files do."""

import pytest
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


def test_no_frame_shows_lightnings_count_or_the_previous_epoch(tmp_path, capsys):
    # Lightning's own hook draws "Epoch 0" (then "Epoch 1" in the second epoch) before a subclass could rename it,
    # and tqdm's reset() redraws the previous epoch's description at 0 %.
    trainer = cpu_trainer(tmp_path, [EpochProgressBar()], max_epochs=2, enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(digits_module(), datamodule=digits_data())
    frames = [f for f in capsys.readouterr().out.replace("\r", "\n").splitlines() if f.startswith("Epoch")]
    descriptions = [f.split(":", 1)[0] for f in frames]
    assert descriptions and set(descriptions) == {"Epoch 1/2", "Epoch 2/2"}
    assert descriptions == sorted(descriptions)  # every frame of epoch 1 comes before every frame of epoch 2
    second = [f for f in frames if f.startswith("Epoch 2/2")]
    assert second[0].startswith("Epoch 2/2:   0%")


def test_leave_keeps_a_bar_per_epoch(tmp_path):
    bar = EpochProgressBar(leave=True)
    assert bar.leave is True
    probe = _Descriptions(bar)
    trainer = cpu_trainer(tmp_path, [bar, probe], max_epochs=2, enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(digits_module(), datamodule=digits_data())
    assert probe.seen == ["Epoch 1/2", "Epoch 1/2", "Epoch 2/2", "Epoch 2/2"]


def test_rich_bar_counts_epochs_from_one(tmp_path):
    pytest.importorskip("rich")
    from cmkd_lightning.callbacks import EpochRichProgressBar

    bar = EpochRichProgressBar(leave=False)
    seen = []

    class _Probe(Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(bar.progress.tasks[bar.train_progress_bar_id].description.strip())

    trainer = cpu_trainer(tmp_path, [bar, _Probe()], max_epochs=2, enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(digits_module(), datamodule=digits_data())
    assert seen == ["Epoch 1/2", "Epoch 1/2", "Epoch 2/2", "Epoch 2/2"]  # Lightning's own: "Epoch 0/1" ... "Epoch 1/1"


@pytest.mark.parametrize("kind", ["tqdm", "rich"])
def test_bars_show_every_steps_loss_between_logging_steps(tmp_path, kind):
    # The module logs train/loss_step only every log_every_n_steps; the bar shows each step's own loss anyway.
    if kind == "rich":
        pytest.importorskip("rich")
        from cmkd_lightning.callbacks import EpochRichProgressBar

        bar = EpochRichProgressBar(leave=False)
    else:
        bar = EpochProgressBar()
    shown, returned = [], []

    class _Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            returned.append(float(outputs["loss"]))
            shown.append(bar.get_metrics(trainer, pl_module)["train/loss_step"])

    trainer = cpu_trainer(
        tmp_path, [bar, _Probe()], max_epochs=2, enable_progress_bar=True, limit_val_batches=0, log_every_n_steps=50
    )
    trainer.fit(digits_module(), datamodule=digits_data())
    assert len(shown) == 4 and shown == pytest.approx(returned, rel=1e-6)
    assert len(set(shown)) == 4  # a new value every step, not the last logged one
