"""Draw the paper's Figs. 1, 3, 7 and 8 from the run folders its configs write (CSV logger version folders).

Each run folder is a CSV logger's ``version_<n>`` folder: ``metrics.csv`` (``val/acc_top1``,
``val/teacher_acc_top1``, ``corr/pearson``, ``corr/spearman`` per epoch), ``config.yaml`` (the resolved config
``cmkd`` saves) and, where the config has the callback, ``training_cost.json`` (``TrainingCost``)::

    python examples/paper_figures/plot_runs.py fig1 runs/motivation/cifar100/kd-*/version_0 --out fig1.png
    python examples/paper_figures/plot_runs.py fig3 runs/motivation/cifar10/kd-*/version_0 --out fig3.png
    python examples/paper_figures/plot_runs.py fig7 runs/fig7/*/version_0 --out fig7.png
    python examples/paper_figures/plot_runs.py fig8 runs/fig8/*/version_0 --out fig8.png

Fig. 1: the teacher's and the student's best validation Top-1 per teacher (ordered by teacher depth), and, when
a ``robustness.csv`` (``CorruptionRobustness``) lies in the run folder, the same on ``elastic_transform``.
Fig. 3: Spearman and Pearson correlation of teacher and student logits per epoch, one line per teacher.
Fig. 7: best Top-1 against mean training time per epoch, the marker area growing with the extra trainable
parameters (trainable parameters minus the fewest among the runs). Fig. 8: best Top-1 against CMKD's beta, one
line per teacher -> student pair. Accuracies are the logged fractions times 100.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure


def read_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` as ``column -> [(epoch, value), ...]`` (rows where the column is filled)."""
    path = run / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Expected a CSV logger run folder holding metrics.csv, but {path} does not exist.")
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, []).append((int(float(row["epoch"] or 0)), float(value)))
    return series


def best(series: dict[str, list[tuple[int, float]]], key: str) -> float:
    """Largest logged value of ``key`` in percent (NaN when never logged)."""
    values = [v for _, v in series.get(key, [])]
    return 100 * max(values) if values else float("nan")


def read_model(run: Path) -> dict[str, Any]:
    """``model.init_args`` of the run's saved ``config.yaml``."""
    path = run / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"Expected the run's resolved config at {path} (cmkd writes it), but it is missing.")
    return (yaml.safe_load(path.read_text()).get("model") or {}).get("init_args") or {}


def _depth(name: str) -> int:
    match = re.search(r"(\d+)", name)
    return int(match.group(1)) if match else 0


def fig1(runs: list[Path]) -> Figure:
    rows = []
    for run in runs:
        metrics, teacher = read_metrics(run), read_model(run)["teacher"]
        row = {"teacher": teacher, "clean": (best(metrics, "val/teacher_acc_top1"), best(metrics, "val/acc_top1"))}
        robustness = run / "robustness.csv"
        if robustness.is_file():
            with robustness.open() as handle:
                table = {r["model"]: r for r in csv.DictReader(handle)}
            if "elastic_transform" in next(iter(table.values())):
                row["elastic"] = tuple(
                    float(table[m]["elastic_transform"]) if m in table else float("nan") for m in ("teacher", "student")
                )
        rows.append(row)
    rows.sort(key=lambda r: _depth(r["teacher"]))
    panels = ["clean"] + (["elastic"] if any("elastic" in r for r in rows) else [])
    fig = Figure(figsize=(5.2 * len(panels), 4), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        names = [r["teacher"] for r in rows]
        for i, label in enumerate(("teacher", "student (ResNet14)")):
            ax.plot(names, [r.get(panel, (float("nan"),) * 2)[i] for r in rows], marker="o", label=label)
        ax.set(xlabel="teacher", ylabel="Top-1 (%)", title=f"{'clean' if panel == 'clean' else 'elastic transform'}")
        ax.legend()
    return fig


def fig3(runs: list[Path]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for run in sorted(runs, key=lambda r: _depth(read_model(r)["teacher"])):
        metrics, teacher = read_metrics(run), read_model(run)["teacher"]
        for ax, key in zip(axes, ("corr/spearman", "corr/pearson")):
            points = metrics.get(key, [])
            ax.plot([e + 1 for e, _ in points], [v for _, v in points], label=teacher)
    for ax, name in zip(axes, ("Spearman", "Pearson")):
        ax.set(xlabel="epoch", ylabel=f"{name} (teacher, student)", title=name)
        ax.legend(fontsize=8)
    return fig


def fig7(runs: list[Path]) -> Figure:
    rows = []
    for run in runs:
        cost = json.loads((run / "training_cost.json").read_text())["summary"]
        name = run.parent.name if run.name.startswith("version_") else run.name
        rows.append(
            (name, cost["mean_epoch_time_s"], best(read_metrics(run), "val/acc_top1"), cost["params_trainable"])
        )
    fewest = min(r[3] for r in rows)
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, seconds, top1, params in rows:
        extra = params - fewest
        ax.scatter(seconds, top1, s=60 + extra / 1e3, alpha=0.7)
        ax.annotate(f"{name} (+{extra / 1e6:.2f} M)", (seconds, top1), xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="training time per epoch (s)", ylabel="Top-1 (%)", title="accuracy vs training cost")
    return fig


def fig8(runs: list[Path]) -> Figure:
    lines: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        model = read_model(run)
        (beta,) = [e["init_args"]["beta"] for e in model.get("losses") or [] if e["class_path"].endswith("CMKDLoss")]
        lines.setdefault(f"{model['teacher']} -> {model['student']}", []).append(
            (float(beta), best(read_metrics(run), "val/acc_top1"))
        )
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for pair, points in sorted(lines.items()):
        points.sort()
        ax.plot([b for b, _ in points], [a for _, a in points], marker="o", label=pair)
    ax.set(xlabel="beta", ylabel="Top-1 (%)", title="CMKD, alpha = gamma = 1")
    ax.legend()
    return fig


FIGURES = {"fig1": fig1, "fig3": fig3, "fig7": fig7, "fig8": fig8}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("figure", choices=sorted(FIGURES))
    parser.add_argument("runs", type=Path, nargs="+", help="CSV logger version folders")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    fig = FIGURES[args.figure](args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
