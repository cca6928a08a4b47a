"""Draw the paper's Fig. 6: histograms of teacher logits per architecture against a fitted normal density.

Each teacher is a model-zoo name and a checkpoint in any format :func:`cmkd_lightning.checkpoint.load_weights`
reads (the community's ``<arch>_vanilla/ckpt_epoch_240.pth``, this library's Lightning checkpoints, whose network
is under ``student.`` for a teacher run, plain state_dicts). The teachers run on the validation split of a data
module (its ``val_dataloader``); every logit of every sample and class goes into the histogram, and the normal
density with the logits' mean and standard deviation is drawn over it::

    python examples/paper_figures/logit_distributions.py \
        --teacher resnet32x4=checkpoints/resnet32x4_vanilla/ckpt_epoch_240.pth \
        --teacher wrn_40_2=checkpoints/wrn_40_2_vanilla/ckpt_epoch_240.pth \
        --data datamodules.cifar100.CIFAR100DataModule --data-args '{"data_dir": "data/cifar100"}' \
        --out fig6.png

Writes ``fig6.png``, ``fig6.json`` (per teacher: number of logits, mean, standard deviation, skewness and excess
kurtosis, both 0 for a normal distribution, min and max) and ``fig6.csv`` (per teacher and bin: the histogram's
density and the fitted normal density at the bin centre). ``--zscore`` first standardises each sample's logits
(CMKD's Eq. 9-11), which shows what z-scoring changes. ``--part teacher`` reads the teacher of a distillation
checkpoint instead of its student.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from cmkd_lightning.checkpoint import load_weights
from cmkd_lightning.functional import zscore
from cmkd_lightning.models import create_model


def parse_teacher(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"Expected `--teacher` as NAME=PATH (a model-zoo name and a checkpoint), but got {spec!r}.")
    return name, Path(path)


def build_datamodule(class_path: str, init_args: dict[str, Any]) -> Any:
    """Instantiate ``module.Class(**init_args)``, prepare it and set it up for validation."""
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"Expected `--data` as a class path like datamodules.cifar100.CIFAR100DataModule, got {class_path!r}."
        )
    datamodule = getattr(importlib.import_module(module_name), class_name)(**init_args)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule


@torch.no_grad()
def collect_logits(
    model: torch.nn.Module, loader: Any, max_batches: int | None = None, standardize: bool = False
) -> np.ndarray:
    """All logits of ``model`` over ``loader`` as a flat float64 array (per-sample z-scored with ``standardize``)."""
    model.eval()
    chunks = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = model(x).double()
        chunks.append((zscore(logits) if standardize else logits).flatten().numpy())
    if not chunks:
        raise ValueError("Expected the validation dataloader to yield at least one batch, but it yielded none.")
    return np.concatenate(chunks)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Count, mean, standard deviation (the normal fit's maximum-likelihood sigma), skewness, excess kurtosis."""
    mean, std = float(values.mean()), float(values.std())
    centred = values - mean
    skew = float((centred**3).mean() / std**3) if std > 0 else 0.0
    kurt = float((centred**4).mean() / std**4 - 3.0) if std > 0 else 0.0
    return {
        "count": int(values.size),
        "mean": mean,
        "std": std,
        "skewness": skew,
        "excess_kurtosis": kurt,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Density of N(mean, std^2) at ``x``."""
    if std <= 0:
        return np.zeros_like(x)
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram ``(edges, density)`` of ``values``."""
    density, edges = np.histogram(values, bins=bins, density=True)
    return edges, density


def draw(results: dict[str, dict[str, Any]], standardize: bool) -> Figure:
    """One panel per teacher: the logits' histogram and the fitted normal density."""
    n = len(results)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (label, res) in zip(axes, results.items()):
        edges, density, stats = res["edges"], res["density"], res["stats"]
        ax.stairs(density, edges, fill=True, alpha=0.5, label="logits")
        x = np.linspace(edges[0], edges[-1], 400)
        ax.plot(
            x,
            normal_pdf(x, stats["mean"], stats["std"]),
            color="C3",
            lw=1.5,
            label=f"N({stats['mean']:.2f}, {stats['std']:.2f}²)",
        )
        ax.plot([], [], " ", label=f"skew {stats['skewness']:.2f}, ex. kurt {stats['excess_kurtosis']:.2f}")
        ax.set_title(label)
        ax.set_xlabel("z-scored logit" if standardize else "logit")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", action="append", required=True, help="NAME=PATH, once per teacher")
    parser.add_argument("--data", default="datamodules.cifar100.CIFAR100DataModule", help="data module class path")
    parser.add_argument("--data-args", default="{}", help="JSON init arguments of the data module")
    parser.add_argument("--num-classes", type=int, help="default: the data module's num_classes")
    parser.add_argument(
        "--part",
        choices=("student", "teacher"),
        default="student",
        help="network of a distillation checkpoint to read (teacher runs store theirs as student)",
    )
    parser.add_argument("--max-batches", type=int, help="validation batches to use (default: all)")
    parser.add_argument("--bins", type=int, default=100)
    parser.add_argument("--zscore", action="store_true", help="standardise each sample's logits first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write; .json and .csv are written beside it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    teachers = [parse_teacher(spec) for spec in args.teacher]
    datamodule = build_datamodule(args.data, json.loads(args.data_args))
    num_classes = args.num_classes or getattr(datamodule, "num_classes", None)
    if num_classes is None:
        raise ValueError("The data module has no `num_classes`; pass --num-classes.")
    results: dict[str, dict[str, Any]] = {}
    for name, path in teachers:
        model = load_weights(create_model(name, num_classes=num_classes), path, part=args.part)
        values = collect_logits(model, datamodule.val_dataloader(), args.max_batches, args.zscore)
        edges, density = histogram(values, args.bins)
        label = name if name not in results else f"{name} ({path})"
        results[label] = {"checkpoint": str(path), "edges": edges, "density": density, "stats": summarize(values)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(results, args.zscore).savefig(args.out, dpi=120)
    summary = {
        label: {"checkpoint": r["checkpoint"], "zscore": args.zscore, **r["stats"]} for label, r in results.items()
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    with args.out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["teacher", "bin_left", "bin_right", "density", "normal_density"])
        for label, r in results.items():
            centres = (r["edges"][:-1] + r["edges"][1:]) / 2
            fit = normal_pdf(centres, r["stats"]["mean"], r["stats"]["std"])
            for left, right, d, f in zip(r["edges"][:-1], r["edges"][1:], r["density"], fit):
                writer.writerow([label, f"{left:.6g}", f"{right:.6g}", f"{d:.6g}", f"{f:.6g}"])
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}, {args.out.with_suffix('.csv')}")
    return args.out


if __name__ == "__main__":
    main()
