import json
import math
import re
import time

import psutil
import pytest
from lightning.pytorch import Callback

from cmkd_lightning.callbacks import TrainingCost
from cmkd_lightning.callbacks.training_cost import parameter_counts
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module

KEYS = ("epoch_time_s", "samples_per_s", "peak_mem_mb", "params_trainable", "params_frozen")


class SleepAndClock(Callback):
    """Makes each training batch take >= `train` s and each validation batch >= `val` s; clocks the epochs."""

    def __init__(self, train: float, val: float):
        self.train, self.val = train, val
        self.epochs: list[float] = []
        self.validations: list[float] = []

    def on_train_epoch_start(self, *args):
        self.epochs.append(-time.perf_counter())

    def on_train_epoch_end(self, *args):
        self.epochs[-1] += time.perf_counter()

    def on_validation_start(self, *args):
        self.validations.append(-time.perf_counter())

    def on_validation_end(self, *args):
        self.validations[-1] += time.perf_counter()

    def on_train_batch_end(self, *args):
        time.sleep(self.train)

    def on_validation_batch_end(self, *args):
        time.sleep(self.val)


def test_logged_values_summary_and_json(tmp_path):
    module = digits_module()
    cost = TrainingCost()
    # the probe's hooks run just before TrainingCost's at both ends of each interval, so the two clocks agree up to
    # the time between two hooks: far less than the 1 s of validation that must be left out
    probe = SleepAndClock(train=0.1, val=0.5)
    trainer = cpu_trainer(tmp_path, [probe, cost], max_epochs=2, limit_val_batches=2)
    trainer.fit(module, datamodule=digits_data())

    student = sum(p.numel() for p in module.student.parameters())
    teacher = sum(p.numel() for p in module.teacher.parameters())
    assert parameter_counts(module) == (student, teacher)
    assert [e["samples"] for e in cost.history] == [128, 128]
    for entry, epoch, validation in zip(cost.history, probe.epochs, probe.validations):
        assert validation >= 1.0 and entry["epoch_time_s"] >= 0.2  # 2 x 0.5 s of validation, 2 x 0.1 s of training
        assert abs(entry["epoch_time_s"] - (epoch - validation)) < 0.1, entry  # validation excluded
        assert math.isclose(entry["samples_per_s"], 128 / entry["epoch_time_s"], rel_tol=1e-9)
        assert 0.5 * psutil.Process().memory_info().rss / 2**20 < entry["peak_mem_mb"] < 1e6
    last = cost.history[-1]
    for key in KEYS:
        assert math.isclose(float(trainer.callback_metrics[f"cost/{key}"]), last[key], rel_tol=1e-6), key
    assert trainer.callback_metrics["cost/params_trainable"] == student
    assert trainer.callback_metrics["cost/params_frozen"] == teacher

    summary = cost.summary
    assert summary["epochs"] == 2 and summary["memory"] == "cpu_rss" and summary["world_size"] == 1
    total = sum(e["epoch_time_s"] for e in cost.history)
    assert math.isclose(summary["total_train_time_s"], total) and math.isclose(
        summary["mean_samples_per_s"], 256 / total
    )
    assert cost.json_path == tmp_path / "lightning_logs" / "version_0" / "training_cost.json"
    saved = json.loads(cost.json_path.read_text())
    assert saved["summary"] == summary and saved["epochs"] == cost.history


def test_student_alone_has_no_frozen_parameters(tmp_path):
    cost = TrainingCost(dirpath=tmp_path / "cost", filename="ce.json")
    trainer = cpu_trainer(tmp_path, [cost], limit_val_batches=0)
    trainer.fit(digits_module(teacher=False), datamodule=digits_data())
    assert cost.summary["params_frozen"] == 0 and cost.summary["params_trainable"] > 0
    assert (tmp_path / "cost" / "ce.json").is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"filename": "cost.txt"},
            ValueError,
            "Expected `filename` to be a file name ending in '.json' (no folder), but got 'cost.txt'.",
        ),
        ({"prefix": None}, TypeError, "Expected `prefix` to be a str, but got NoneType None."),
        ({"dirpath": ""}, ValueError, "Expected `dirpath` to be a non-empty path, but got ''."),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        TrainingCost(**kwargs)
