import csv
import math
import re

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from cmkd_lightning.callbacks import LogitCorrelationHeatmap, class_correlation, correlation_gap
from cmkd_lightning.callbacks.logit_heatmap import DKD_MAX_DIFF, logit_difference
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module, split_logits


def reference_gap(student, teacher, targets, num_classes):
    """numpy: per-class mean logits, np.corrcoef of the class rows, |difference|, zero diagonal."""
    s, t, y = student.double().numpy(), teacher.double().numpy(), targets.numpy()
    ms = np.stack([s[y == c].mean(0) for c in range(num_classes)])
    mt = np.stack([t[y == c].mean(0) for c in range(num_classes)])
    gap = np.abs(np.corrcoef(mt) - np.corrcoef(ms))
    np.fill_diagonal(gap, 0.0)
    return gap


def reference_difference(student, teacher, targets, num_classes):
    """numpy, as DKD's notebook: per-class mean logits summed in a loop, |student - teacher|, zero diagonal."""
    ms, mt = np.zeros((num_classes, num_classes)), np.zeros((num_classes, num_classes))
    count = np.zeros((num_classes, 1))
    for s, t, y in zip(student.double().numpy(), teacher.double().numpy(), targets.numpy()):
        count[y, 0] += 1
        ms[y] += s
        mt[y] += t
    diff = np.abs(ms / count - mt / count)
    for i in range(num_classes):
        diff[i, i] = 0
    return diff


def test_logit_difference_matches_numpy_and_marks_empty_classes():
    torch.manual_seed(0)
    student, teacher = torch.randn(40, 5), torch.randn(40, 5) * 3
    targets = torch.arange(40) % 5
    ms = torch.stack([student[targets == c].double().mean(0) for c in range(5)])
    mt = torch.stack([teacher[targets == c].double().mean(0) for c in range(5)])
    np.testing.assert_allclose(
        logit_difference(ms, mt).numpy(), reference_difference(student, teacher, targets, 5), atol=1e-12
    )
    ms[3] = float("nan")
    diff = logit_difference(ms, mt)
    assert torch.isnan(diff[3, [0, 1, 2, 4]]).all() and diff[3, 3] == 0 and not torch.isnan(diff[[0, 1, 2, 4]]).any()


def test_default_draws_the_papers_logit_difference_on_dkds_scale(tmp_path):
    dm, module = digits_data(), digits_module()
    heatmap = LogitCorrelationHeatmap()
    assert (heatmap.matrix, heatmap.vmax, DKD_MAX_DIFF) == ("logit_difference", 3.0, 3.0)
    trainer = cpu_trainer(tmp_path, [heatmap])
    trainer.fit(module, datamodule=dm)

    student, teacher, targets = split_logits(module, dm)
    ref = reference_difference(student, teacher, targets, 100)
    np.testing.assert_allclose(heatmap.difference.numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(heatmap.gap.numpy(), reference_gap(student, teacher, targets, 100), atol=1e-9)
    off_diagonal = ref[~np.eye(100, dtype=bool)].mean()
    assert math.isclose(float(trainer.callback_metrics["heatmap/mean_abs_diff"]), off_diagonal, rel_tol=1e-5)
    (path,) = heatmap.figure_paths
    with Image.open(path) as image:
        assert 500 < image.size[0] < 1500  # one panel


def test_class_correlation_matches_numpy_and_marks_empty_classes():
    torch.manual_seed(0)
    means = torch.randn(6, 9, dtype=torch.float64)
    np.testing.assert_allclose(class_correlation(means).numpy(), np.corrcoef(means.numpy()), atol=1e-12)
    means[2] = float("nan")
    corr = class_correlation(means)
    assert torch.isnan(corr[2]).all() and torch.isnan(corr[:, 2]).all()
    assert not torch.isnan(corr[[0, 1, 3, 4, 5]][:, [0, 1, 3, 4, 5]]).any()
    gap = correlation_gap(means, means)
    assert gap.diagonal().eq(0).all() and float(torch.nan_to_num(gap).abs().max()) == 0.0


def test_heatmap_values_file_and_tensorboard_image(tmp_path):
    dm, module = digits_data(), digits_module()
    heatmap = LogitCorrelationHeatmap(matrix="correlation_gap", include_matrices=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = cpu_trainer(tmp_path, [heatmap], logger=logger)
    trainer.fit(module, datamodule=dm)

    student, teacher, targets = split_logits(module, dm)
    ref = reference_gap(student, teacher, targets, 100)
    np.testing.assert_allclose(heatmap.gap.numpy(), ref, atol=1e-9)
    off_diagonal = ref[~np.eye(100, dtype=bool)].mean()
    assert math.isclose(float(trainer.callback_metrics["heatmap/mean_abs_diff"]), off_diagonal, rel_tol=1e-5)

    (path,) = heatmap.figure_paths
    assert path == tmp_path / "tb" / "version_0" / "figures" / "logit_correlation_epoch001.png"
    with Image.open(path) as image:
        width, height = image.size
    assert width > 1500 and 500 < height < width  # three panels side by side

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0}).Reload()
    assert "heatmap/logit_correlation" in events.Tags()["images"]
    logged = events.Images("heatmap/logit_correlation")[0]
    assert (logged.width, logged.height) == (width, height)


def test_every_n_epochs_and_dirpath(tmp_path):
    heatmap = LogitCorrelationHeatmap(every_n_epochs=2, dirpath=tmp_path / "figs", vmax=0.5)
    trainer = cpu_trainer(tmp_path, [heatmap], max_epochs=3, num_sanity_val_steps=2)
    trainer.fit(digits_module(), datamodule=digits_data())
    assert heatmap.figure_paths == [tmp_path / "figs" / "logit_correlation_epoch002.png"]
    with Image.open(heatmap.figure_paths[0]) as image:
        assert image.size[0] > 500 and image.size[1] > 500  # one panel, 100 classes readable
    with (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["heatmap/mean_abs_diff"]]
    assert [row["epoch"] for row in rows] == ["1"]  # logged once, at epoch 1


def test_module_without_teacher_is_skipped(tmp_path):
    heatmap = LogitCorrelationHeatmap()
    trainer = cpu_trainer(tmp_path, [heatmap])
    with pytest.warns(UserWarning, match="LogitCorrelationHeatmap: the LightningModule has no `teacher`"):
        trainer.fit(digits_module(teacher=False), datamodule=digits_data())
    assert heatmap.figure_paths == [] and "heatmap/mean_abs_diff" not in trainer.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"every_n_epochs": 0}, ValueError, "Expected `every_n_epochs` to be an int >= 1, but got 0."),
        ({"vmax": 0.0}, ValueError, "Expected `vmax` to be a finite number > 0, but got 0.0."),
        ({"vmax": "1"}, TypeError, "Expected `vmax` to be a number > 0, but got str '1'."),
        (
            {"matrix": "kl"},
            ValueError,
            "Expected `matrix` to be 'logit_difference' or 'correlation_gap', but got 'kl'.",
        ),
        ({"include_matrices": 1}, TypeError, "Expected `include_matrices` to be a bool, but got int 1."),
        ({"dirpath": 3}, TypeError, "Expected `dirpath` to be a str or os.PathLike, but got int 3."),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        LogitCorrelationHeatmap(**kwargs)
