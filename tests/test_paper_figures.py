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
