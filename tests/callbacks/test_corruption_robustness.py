import csv
import math
import re

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from cmkd_lightning.callbacks import CorruptionRobustness
from datamodules.cifar100 import cifar100_test_transform
from datamodules.cifar100c import CIFAR100CDataset
from tests._fakes import write_fake_cifar100c
from tests.callbacks._helpers import CORRUPTIONS, cifar_module, corrupted, cpu_trainer, fake_data

SEVERITIES = (1, 3)


@torch.no_grad()
def direct_accuracy(network, root, corruption, severity):
    dataset = CIFAR100CDataset(root, corruption, severity, cifar100_test_transform())
    correct = [int(network(x[None]).argmax()) == y for x, y in (dataset[i] for i in range(len(dataset)))]
    return sum(correct) / len(correct)


def test_table_values_csv_and_logged_scalars(tmp_path):
    module = cifar_module()
    root, clean = fake_data(tmp_path, module)
    callback = CorruptionRobustness(corrupted(root, CORRUPTIONS, SEVERITIES, batch_size=3), evaluate_teacher=True)
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
        corrupted(root, ["gaussian_noise"], [2]),
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
    callback = CorruptionRobustness(corrupted(root, ["fog", "snow", "frost"], [1]))
    trainer = cpu_trainer(tmp_path, [callback])
    data = DataLoader(TensorDataset(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100-C files not found: .*snow\.npy, .*frost\.npy\."):
        trainer.test(cifar_module(), dataloaders=data, verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"data": "data/CIFAR-100-C"},
            TypeError,
            "Expected `data` to be a LightningDataModule with `test_names` and one test dataloader per name",
        ),
        (
            {"data": {"fog": TensorDataset(torch.zeros(1))}},
            ValueError,
            "Expected `data` to name its sets '<corruption>/s<severity>' (e.g. 'fog/s3'), but got 'fog'.",
        ),
        ({"data": {"fog/s1": 3}}, TypeError, "Expected `data` to be a LightningDataModule"),
        ({"batch_size": 0}, ValueError, "Expected `batch_size` to be an int >= 1, but got 0."),
        ({"evaluate_teacher": "yes"}, TypeError, "Expected `evaluate_teacher` to be a bool, but got str 'yes'."),
        (
            {"filename": "a/b.csv"},
            ValueError,
            "Expected `filename` to be a file name ending in '.csv' (no folder), but got 'a/b.csv'.",
        ),
        ({"dirpath": 3}, TypeError, "Expected `dirpath` to be a str or os.PathLike, but got int 3."),
    ],
)
def test_argument_errors(kwargs, error, message):
    arguments = {"data": {"fog/s1": TensorDataset(torch.zeros(1))}, **kwargs}
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        CorruptionRobustness(**arguments)


def test_corruptions_and_severities_come_from_the_data(tmp_path):
    from cmkd_lightning.callbacks.corruption_robustness import PAPER_CORRUPTIONS
    from datamodules.cifar100c import CIFAR100C_CORRUPTIONS, CIFAR100CDataModule

    # Table V's columns: brightness, contrast, elastic, fog, pixelate.
    assert PAPER_CORRUPTIONS == ("brightness", "contrast", "elastic_transform", "fog", "pixelate")
    assert set(PAPER_CORRUPTIONS) <= set(CIFAR100C_CORRUPTIONS)
    paper = CorruptionRobustness(CIFAR100CDataModule(tmp_path, corruptions=list(PAPER_CORRUPTIONS)))
    assert (paper.corruptions, paper.severities) == (PAPER_CORRUPTIONS, (1, 2, 3, 4, 5))
    assert CorruptionRobustness(CIFAR100CDataModule(tmp_path)).corruptions == CIFAR100C_CORRUPTIONS
    mapping = CorruptionRobustness({"fog/s2": TensorDataset(torch.zeros(1)), "snow/s1": TensorDataset(torch.zeros(1))})
    assert (mapping.corruptions, mapping.severities) == (("fog", "snow"), (1, 2))


def test_a_mapping_of_datasets_and_the_trainer_progress_bar(tmp_path, capsys):
    module = cifar_module()
    root, clean = fake_data(tmp_path, module)
    transform = cifar100_test_transform()
    sets = {f"gaussian_noise/s{s}": CIFAR100CDataset(root, "gaussian_noise", s, transform) for s in SEVERITIES}
    callback = CorruptionRobustness(sets, batch_size=2)
    for bar in (TQDMProgressBar(), RichProgressBar()):
        trainer = cpu_trainer(tmp_path, [callback, bar], enable_progress_bar=True)
        trainer.test(module, dataloaders=DataLoader(clean, batch_size=5), verbose=False)
        assert math.isclose(float(trainer.callback_metrics["robustness/gaussian_noise"]), 0.75, abs_tol=1e-6)
        captured = capsys.readouterr()
        assert "CorruptionRobustness: 2 sets" in captured.err + captured.out, type(bar).__name__


def test_runs_under_the_trainer_precision(tmp_path, monkeypatch):
    module = cifar_module()
    root, clean = fake_data(tmp_path, module)
    dtypes = []
    forward = type(module.student).forward

    def spy(self, x):
        out = forward(self, x)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(type(module.student), "forward", spy)
    callback = CorruptionRobustness(corrupted(root, ["fog"], [1]), clean_dataset=clean)
    trainer = cpu_trainer(tmp_path, [callback], precision="bf16-mixed")
    trainer.test(module, dataloaders=DataLoader(clean, batch_size=12), verbose=False)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert not math.isnan(float(trainer.callback_metrics["robustness/fog"]))


def test_the_library_layer_does_not_import_datamodules():
    import ast
    from pathlib import Path

    import cmkd_lightning

    root = Path(cmkd_lightning.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if relative == "cli/app.py" or relative.startswith("experiments/"):  # the applications may
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "datamodules" or n.startswith("datamodules.") for n in names):
                offenders.append(str(path.relative_to(path.parents[1])))
    assert sorted(set(offenders)) == ["teacher_cache/build.py"]  # the cache builder app, lazily
