import csv
import math
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cmkd_lightning.callbacks import CorruptionRobustness
from datamodules.cifar100 import cifar100_test_transform
from datamodules.cifar100c import CIFAR100CDataset
from tests._fakes import write_fake_cifar100c
from tests.callbacks._helpers import CORRUPTIONS, cifar_module, cpu_trainer, fake_data

SEVERITIES = (1, 3)


@torch.no_grad()
def direct_accuracy(network, root, corruption, severity):
    dataset = CIFAR100CDataset(root, corruption, severity, cifar100_test_transform())
    correct = [int(network(x[None]).argmax()) == y for x, y in (dataset[i] for i in range(len(dataset)))]
    return sum(correct) / len(correct)


def test_table_values_csv_and_logged_scalars(tmp_path):
    module = cifar_module()
    root, clean = fake_data(tmp_path, module)
    callback = CorruptionRobustness(
        root, corruptions=list(CORRUPTIONS), severities=list(SEVERITIES), batch_size=3, evaluate_teacher=True
    )
    trainer = cpu_trainer(tmp_path, [callback])
    trainer.test(module, dataloaders=DataLoader(clean, batch_size=5), verbose=False)
    metrics = trainer.callback_metrics

    assert math.isclose(float(metrics["robustness/clean"]), 8 / 12, abs_tol=1e-6)
    assert math.isclose(float(metrics["robustness/clean"]), float(metrics["test/acc_top1"]), abs_tol=1e-6)
    assert math.isclose(float(metrics["robustness/gaussian_noise"]), 0.75, abs_tol=1e-6)
    expected = {}
    for name, network in (("student", module.student), ("teacher", module.teacher)):
        per = {c: np.mean([direct_accuracy(network, root, c, s) for s in SEVERITIES]) for c in CORRUPTIONS}
        expected[name] = per
        key = "robustness/" if name == "student" else "robustness/teacher/"
        for c in CORRUPTIONS:
            assert math.isclose(float(metrics[f"{key}{c}"]), per[c], abs_tol=1e-6), (name, c)
            assert callback.results[name][c].keys() == set(SEVERITIES)
        assert math.isclose(float(metrics[f"{key}mean"]), np.mean(list(per.values())), abs_tol=1e-6)

    with callback.csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert callback.csv_path == tmp_path / "lightning_logs" / "version_0" / "robustness.csv"
    assert list(rows[0]) == [
        "model",
        "clean",
        "gaussian_noise",
        "gaussian_noise_drop",
        "fog",
        "fog_drop",
        "mean",
        "mean_drop",
    ]
    assert [row["model"] for row in rows] == ["student", "teacher"]
    student = rows[0]
    assert float(student["clean"]) == round(100 * 8 / 12, 2)
    assert float(student["gaussian_noise"]) == 75.0
    assert float(student["gaussian_noise_drop"]) == round(100 * (0.75 - 8 / 12), 2)
    assert float(student["mean"]) == round(100 * np.mean(list(expected["student"].values())), 2)


def test_clean_dataset_argument_and_student_only(tmp_path):
    module = cifar_module()
    root, clean = fake_data(tmp_path, module)
    callback = CorruptionRobustness(
        root,
        corruptions=["gaussian_noise"],
        severities=[2],
        clean_dataset=clean,
        evaluate_teacher=False,
        dirpath=tmp_path / "out",
        filename="table.csv",
    )
    other = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    trainer = cpu_trainer(tmp_path, [callback])
    trainer.test(module, dataloaders=DataLoader(other, batch_size=4), verbose=False)
    assert math.isclose(float(trainer.callback_metrics["robustness/clean"]), 8 / 12, abs_tol=1e-6)
    assert not any(k.startswith("robustness/teacher") for k in trainer.callback_metrics)
    assert (tmp_path / "out" / "table.csv").read_text().splitlines()[1].startswith("student,66.67,75.0,8.33,")


def test_missing_files_are_listed(tmp_path):
    root = write_fake_cifar100c(tmp_path / "c100c", corruptions=("fog",), n_per_severity=2)
    callback = CorruptionRobustness(root, corruptions=["fog", "snow", "frost"])
    trainer = cpu_trainer(tmp_path, [callback])
    data = DataLoader(TensorDataset(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(FileNotFoundError, match=r"snow\.npy, .*frost\.npy are missing"):
        trainer.test(cifar_module(), dataloaders=data, verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"corruptions": ["fog", "blur"]},
            ValueError,
            "Expected `corruptions` to be one of gaussian_noise, shot_noise",
        ),
        (
            {"corruptions": "fog"},
            ValueError,
            "Expected `corruptions` to be 'all', 'paper', None or a list of corruption names, but got 'fog'.",
        ),
        (
            {"corruptions": 3},
            TypeError,
            "Expected `corruptions` to be 'all', 'paper', None or a list of corruption names, but got 3.",
        ),
        ({"corruptions": []}, ValueError, "Expected `corruptions` to be a non-empty list, but got []."),
        (
            {"corruptions": ["fog", "fog"]},
            ValueError,
            "Expected `corruptions` to hold no duplicates, but got ['fog', 'fog'].",
        ),
        (
            {"severities": [0, 1]},
            ValueError,
            "Expected `severities` to be a non-empty list of ints in 1..5, but got [0, 1].",
        ),
        ({"severities": [2, 2]}, ValueError, "Expected `severities` to hold no duplicates, but got [2, 2]."),
        ({"batch_size": 0}, ValueError, "Expected `batch_size` to be an int >= 1, but got 0."),
        (
            {"evaluate_teacher": "yes"},
            TypeError,
            "Expected `evaluate_teacher` to be a bool, but got str 'yes'.",
        ),
        (
            {"filename": "a/b.csv"},
            ValueError,
            "Expected `filename` to be a file name ending in '.csv' (no folder), but got 'a/b.csv'.",
        ),
        ({"root": None}, TypeError, "Expected `root` to be a str or os.PathLike, but got NoneType None."),
    ],
)
def test_argument_errors(kwargs, error, message):
    arguments = {"root": "data/CIFAR-100-C", **kwargs}
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        CorruptionRobustness(**arguments)


def test_corruption_presets_are_one_argument_away(tmp_path):
    from cmkd_lightning.callbacks.corruption_robustness import PAPER_CORRUPTIONS
    from datamodules.cifar100c import CIFAR100C_CORRUPTIONS

    # Table V's columns: brightness, contrast, elastic, fog, pixelate.
    assert PAPER_CORRUPTIONS == ("brightness", "contrast", "elastic_transform", "fog", "pixelate")
    assert set(PAPER_CORRUPTIONS) <= set(CIFAR100C_CORRUPTIONS)
    assert CorruptionRobustness(tmp_path, corruptions="paper").corruptions == PAPER_CORRUPTIONS
    assert CorruptionRobustness(tmp_path, corruptions="all").corruptions == CIFAR100C_CORRUPTIONS
    assert CorruptionRobustness(tmp_path).corruptions == CIFAR100C_CORRUPTIONS
