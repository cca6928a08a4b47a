"""Two CPU processes (gloo): the reduced callback values equal one process over the same validation set."""

import math

import pytest
import torch

from cmkd_lightning.callbacks import CorrelationMonitor, CorruptionRobustness, LogitCorrelationHeatmap
from tests.callbacks._helpers import cifar_module, corrupted, cpu_trainer, digits_data, digits_module, fake_data

pytestmark = pytest.mark.slow  # two processes per test


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_values_equal_single_process(tmp_path):
    dm = digits_data(val_size=128, batch_size=32)  # 128 = 2 processes x 2 batches x 32: no sampler padding
    module = digits_module()
    single = cpu_trainer(tmp_path / "single", [CorrelationMonitor(), LogitCorrelationHeatmap()])
    single.validate(module, datamodule=dm, verbose=False)
    expected = {k: float(v) for k, v in single.callback_metrics.items() if k.startswith(("corr/", "heatmap/"))}
    assert len(expected) == 5

    callbacks = [CorrelationMonitor(), LogitCorrelationHeatmap()]
    ddp = cpu_trainer(tmp_path / "ddp", callbacks, devices=2, strategy="ddp_fork")
    ddp.validate(module, datamodule=dm, verbose=False)
    for key, value in expected.items():
        assert math.isclose(float(ddp.callback_metrics[key]), value, abs_tol=1e-6), key


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_robustness_equals_single_process(tmp_path):
    from torch.utils.data import DataLoader

    module = cifar_module()
    root, clean = fake_data(tmp_path, module)  # the student is right on 3 of 4 gaussian_noise images, 8 of 12 clean
    results = []
    for devices, strategy in ((1, "auto"), (2, "ddp_fork")):
        callback = CorruptionRobustness(
            corrupted(root, ["gaussian_noise", "fog"], [1, 2], batch_size=2),
            evaluate_teacher=True,
            clean_dataset=clean,
            batch_size=2,
        )
        trainer = cpu_trainer(tmp_path / strategy, [callback], devices=devices, strategy=strategy)
        trainer.test(module, dataloaders=DataLoader(clean, batch_size=4), verbose=False)
        results.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("robustness/")})
    assert len(results[0]) == 8 and results[0]["robustness/gaussian_noise"] == 0.75
    for key, value in results[0].items():
        assert math.isclose(results[1][key], value, abs_tol=1e-7), key
