"""examples/paper_figures/plot_runs.py draws Figs. 1, 3, 7, 8 from run folders in the format cmkd writes."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot_runs", REPO / "examples" / "paper_figures" / "plot_runs.py")
plot_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_runs)


def write_run(root: Path, name: str, teacher: str, beta: float = 4.0, epochs: int = 3) -> Path:
    """A CSV logger version folder: metrics.csv (CSVLogger layout), config.yaml, training_cost.json, robustness.csv."""
    run = root / name / "version_0"
    run.mkdir(parents=True)
    columns = ["corr/pearson", "corr/spearman", "epoch", "step", "train/loss", "val/acc_top1", "val/teacher_acc_top1"]
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for e in range(epochs):
            writer.writerow({"epoch": e, "step": 10 * e + 5, "train/loss": 1.0})  # a training row: other cells empty
            writer.writerow(
                {
                    "epoch": e,
                    "step": 10 * e + 9,
                    "corr/pearson": 0.5 + 0.1 * e,
                    "corr/spearman": 0.1 * e,
                    "val/acc_top1": 0.5 + 0.01 * e + beta / 100,
                    "val/teacher_acc_top1": 0.7,
                }
            )
    losses = [{"class_path": "cmkd_lightning.losses.CMKDLoss", "init_args": {"temperature": 4.0, "beta": beta}}]
    config = {"model": {"init_args": {"student": "resnet14", "teacher": teacher, "losses": losses}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"mean_epoch_time_s": 10.0 + beta, "params_trainable": 1_000_000 + int(beta) * 1000}
    (run / "training_cost.json").write_text(json.dumps({"summary": summary, "epochs": []}))
    with (run / "robustness.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "clean", "elastic_transform", "elastic_transform_drop", "mean", "mean_drop"])
        writer.writerow(["student", 52.0, 40.0, -12.0, 40.0, -12.0])
        writer.writerow(["teacher", 70.0, 55.0, -15.0, 55.0, -15.0])
    return run


def test_metrics_are_read_per_column_and_best_is_in_percent(tmp_path):
    run = write_run(tmp_path, "kd", "resnet56")
    metrics = plot_runs.read_metrics(run)
    assert [e for e, _ in metrics["val/acc_top1"]] == [0, 1, 2] and len(metrics["train/loss"]) == 3
    assert plot_runs.best(metrics, "val/acc_top1") == pytest.approx(100 * (0.52 + 0.04))
    with pytest.raises(FileNotFoundError, match="holding metrics.csv"):
        plot_runs.read_metrics(tmp_path)


@pytest.mark.parametrize("figure", ["fig1", "fig3", "fig7", "fig8"])
def test_each_figure_is_written(tmp_path, figure, capsys):
    runs = [
        write_run(tmp_path, f"run{i}", teacher, beta=b)
        for i, (teacher, b) in enumerate([("resnet110", 1.0), ("resnet20", 2.0), ("resnet56", 4.0)])
    ]
    out = plot_runs.main([figure, *map(str, runs), "--out", str(tmp_path / "figs" / f"{figure}.png")])
    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 300
    assert f"wrote {out}" in capsys.readouterr().out


def test_fig1_orders_teachers_by_depth_and_adds_the_elastic_panel(tmp_path):
    runs = [write_run(tmp_path, t, t) for t in ("resnet110", "resnet20", "resnet44")]
    fig = plot_runs.fig1(runs)
    clean, elastic = fig.axes
    assert [t.get_text() for t in clean.get_xticklabels()] == ["resnet20", "resnet44", "resnet110"]
    assert list(elastic.lines[1].get_ydata()) == [40.0, 40.0, 40.0]


# ---------------------------------------------------------------------------------------------------------------
# Fig. 6: examples/paper_figures/logit_distributions.py

_spec6 = importlib.util.spec_from_file_location(
    "logit_distributions", REPO / "examples" / "paper_figures" / "logit_distributions.py"
)
logit_distributions = importlib.util.module_from_spec(_spec6)
_spec6.loader.exec_module(logit_distributions)

_SYNTHETIC = {"data_dir": "unused", "synthetic": True, "synthetic_size": 24, "batch_size": 8, "num_workers": 0}


def _teacher_run_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint as a teacher run writes it: a Lightning file of TeacherModule, the network under `student.`."""
    import lightning as L
    import torch

    from cmkd_lightning import TeacherModule
    from datamodules.cifar100 import CIFAR100DataModule

    torch.manual_seed(0)
    module = TeacherModule("resnet8", num_classes=100)
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=CIFAR100DataModule(**_SYNTHETIC))
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    assert any(k.startswith("student.") for k in torch.load(path, weights_only=False)["state_dict"])
    return path


def test_logit_distributions_on_a_teacher_run_and_a_repdistiller_file(tmp_path, capsys):
    import torch
    from scipy import stats

    from cmkd_lightning.checkpoint import load_weights
    from cmkd_lightning.models import create_model
    from datamodules.cifar100 import CIFAR100DataModule

    lightning_ckpt = _teacher_run_checkpoint(tmp_path)
    torch.manual_seed(1)
    other = create_model("resnet14", num_classes=100)
    rep_file = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    rep_file.parent.mkdir()
    torch.save({"epoch": 240, "model": other.state_dict(), "accuracy": 0.0}, rep_file)

    out = logit_distributions.main(
        [
            "--teacher",
            f"resnet8={lightning_ckpt}",
            "--teacher",
            f"resnet14={rep_file}",
            "--data",
            "datamodules.cifar100.CIFAR100DataModule",
            "--data-args",
            json.dumps(_SYNTHETIC),
            "--bins",
            "20",
            "--out",
            str(tmp_path / "figs" / "fig6.png"),
        ]
    )
    with Image.open(out) as image:
        assert image.size[0] > 500 and image.size[1] > 200
    assert "wrote" in capsys.readouterr().out
    summary = json.loads(out.with_suffix(".json").read_text())
    assert list(summary) == ["resnet8", "resnet14"]

    # the summary is the logits' own: recompute them with the library's loader and compare with scipy
    dm = CIFAR100DataModule(**_SYNTHETIC)
    dm.setup("validate")
    model = load_weights(create_model("resnet8", num_classes=100), lightning_ckpt, part="student").eval()
    with torch.no_grad():
        values = torch.cat([model(x).double().flatten() for x, _ in dm.val_dataloader()]).numpy()
    got = summary["resnet8"]
    assert got["count"] == 24 * 100
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-6)
    assert got["std"] == pytest.approx(stats.norm.fit(values)[1], rel=1e-6)
    assert got["skewness"] == pytest.approx(stats.skew(values), rel=1e-5, abs=1e-8)
    assert got["excess_kurtosis"] == pytest.approx(stats.kurtosis(values), rel=1e-5, abs=1e-8)
    assert (got["min"], got["max"]) == pytest.approx((values.min(), values.max()))

    with out.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 20
    r8 = [r for r in rows if r["teacher"] == "resnet8"]
    widths = [float(r["bin_right"]) - float(r["bin_left"]) for r in r8]
    assert sum(float(r["density"]) * w for r, w in zip(r8, widths)) == pytest.approx(1.0, rel=1e-4)
    centre = (float(r8[10]["bin_left"]) + float(r8[10]["bin_right"])) / 2
    assert float(r8[10]["normal_density"]) == pytest.approx(stats.norm.pdf(centre, got["mean"], got["std"]), rel=1e-4)


def test_logit_distributions_zscore_gives_standardised_logits(tmp_path):
    import numpy as np
    import torch

    from cmkd_lightning.models import create_model

    torch.manual_seed(2)
    path = tmp_path / "plain.pth"
    torch.save(create_model("resnet8", num_classes=100).state_dict(), path)
    out = logit_distributions.main(
        [
            "--teacher",
            f"resnet8={path}",
            "--data-args",
            json.dumps(_SYNTHETIC),
            "--zscore",
            "--max-batches",
            "2",
            "--out",
            str(tmp_path / "z.png"),
        ]
    )
    got = json.loads(out.with_suffix(".json").read_text())["resnet8"]
    assert got["count"] == 2 * 8 * 100 and got["zscore"] is True
    assert got["mean"] == pytest.approx(0.0, abs=1e-9)
    assert got["std"] == pytest.approx(np.sqrt(99 / 100), rel=1e-4)  # unbiased per-row std 1 -> population sqrt(99/100)


@pytest.mark.parametrize(
    ("argv", "error", "match"),
    [
        (["--teacher", "resnet8"], ValueError, r"Expected `--teacher` as NAME=PATH"),
        (["--teacher", "resnet8=missing.pth"], FileNotFoundError, r"missing\.pth"),
    ],
)
def test_logit_distributions_errors(tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        logit_distributions.main([*argv, "--data-args", json.dumps(_SYNTHETIC), "--out", str(tmp_path / "x.png")])
