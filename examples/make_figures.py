"""Draw the paper's evidence figures from a short CPU run on composed digits (100 classes).

One command trains a teacher, then a KD student and a CMKD student from the same initialisation and batch
order, with the callbacks of :mod:`cmkd_lightning.callbacks` attached, and writes to ``--out`` (default
``runs/figures/``, outside the tracked tree):

- ``logit_correlation_heatmap.png`` (Fig. 9): |class-correlation gap| of the logits, KD vs CMKD, same scale;
- ``tsne_embedding.png`` (Fig. 10): t-SNE of the students' penultimate features, first 20 classes;
- ``correlation_over_epochs.png`` (Fig. 3): teacher-student Pearson / Spearman and KL per epoch;
- ``training_cost.png`` (Fig. 7): time per epoch, throughput and parameter counts, from short extra runs that
  alternate KD and CMKD (a shared CPU's load drifts; alternating exposes both methods to it alike).

Run from the repository root (about 1-2 minutes on 2 CPU cores)::

    python examples/make_figures.py                                   # -> runs/figures/*.png
    python examples/make_figures.py --out docs/figures --overwrite    # refresh the figures the docs show

An existing figure is never replaced without ``--overwrite``: the script stops before training and names it.

The callbacks' own outputs (per-epoch heatmaps, t-SNE PNG, cost JSON, metrics CSV) stay in ``--workdir``.
The run is tiny: the numbers show what the callbacks measure, not the paper's results.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure

from cmkd_lightning import DistillationModule
from cmkd_lightning.callbacks import (
    CorrelationMonitor,
    EmbeddingProjection,
    LogitCorrelationHeatmap,
    TrainingCost,
)
from cmkd_lightning.callbacks._figures import describe_method
from cmkd_lightning.callbacks.embedding_projection import draw_embedding
from cmkd_lightning.callbacks.logit_heatmap import draw_correlation_gap, mean_off_diagonal
from cmkd_lightning.losses import CMKDLoss, KDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.runtime import quiet_lightning, set_cpu_threads
from datamodules import ComposedDigitsDataModule

COLOURS = {"KD": "tab:blue", "CMKD": "tab:red"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/figures"), help="folder of the four PNGs (default: runs/figures)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace figures that already exist in --out")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--student-epochs", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--cost-repeats", type=int, default=3, help="alternating cost runs per method")
    parser.add_argument("--tsne-samples", type=int, default=1000, help="test images in the t-SNE (classes 0-19)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: $CMKD_CPU_THREADS or 1, the fastest for these tiny CNNs)",
    )
    return parser.parse_args(argv)


def datamodule(args: argparse.Namespace) -> ComposedDigitsDataModule:
    """A fresh datamodule per run: same data and the same shuffling order for every run."""
    return ComposedDigitsDataModule(
        num_digits=2,
        train_size=args.train_size,
        val_size=1000,
        test_size=2500,
        batch_size=128,
        seed=args.seed,
    )


def trainer(workdir: Path, name: str, epochs: int, callbacks: list, validate: bool = True) -> Trainer:
    return Trainer(
        limit_val_batches=1.0 if validate else 0,
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=CSVLogger(workdir, name=name),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def train_teacher(args: argparse.Namespace, workdir: Path) -> torch.nn.Module:
    seed_everything(args.seed, verbose=False)
    module = DistillationModule(student=digits_teacher(100), lr_scheduler=WarmupCosine)  # SGD lr 0.05, cosine
    run = trainer(workdir, "teacher", args.teacher_epochs, [])
    run.fit(module, datamodule=datamodule(args))
    print(f"teacher: val top-1 {100 * float(run.callback_metrics['val/acc_top1']):.2f}%")
    return module.student


def student_module(method: str, teacher: torch.nn.Module, seed: int) -> DistillationModule:
    seed_everything(seed, verbose=False)  # same student initialisation for both methods
    if method == "KD":  # the CIFAR-100 recipe: CE 0.1, KD 0.9, T = 4
        losses, weights, ce_weight = [KDLoss(temperature=4.0)], [0.9], 0.1
    else:  # the paper's alpha = 1 on CE plus the CMKD loss (beta = 4, gamma = 1, T = 4)
        losses, weights, ce_weight = [CMKDLoss(temperature=4.0)], [1.0], 1.0
    return DistillationModule(
        student=digits_student(100),
        teacher=copy.deepcopy(teacher),
        losses=losses,
        loss_weights=weights,
        ce_weight=ce_weight,
        lr_scheduler=WarmupCosine,
    )


def train_student(args: argparse.Namespace, workdir: Path, method: str, teacher: torch.nn.Module) -> dict:
    data = datamodule(args)
    data.setup("fit")
    callbacks = {
        "corr": CorrelationMonitor(),
        "heatmap": LogitCorrelationHeatmap(every_n_epochs=args.student_epochs),
        "tsne": EmbeddingProjection(
            num_samples=args.tsne_samples, max_classes=20, dataset=data.datasets["test"], num_threads=1
        ),
    }
    run = trainer(workdir, method.lower(), args.student_epochs, list(callbacks.values()))
    module = student_module(method, teacher, args.seed)
    run.fit(module, datamodule=data)
    val_top1 = float(run.callback_metrics["val/acc_top1"])
    # The t-SNE shows test images, so its panel states the student's accuracy on the whole test set, counted here.
    test_top1 = test_accuracy(module, data.datasets["test"])
    last = callbacks["corr"].history[-1]
    print(
        f"{method}: val top-1 {100 * val_top1:.2f}%, test top-1 {100 * test_top1:.2f}%, "
        f"Pearson {last['pearson']:.3f}, Spearman {last['spearman']:.3f}"
    )
    return {"top1": test_top1, "val_top1": val_top1, "label": describe_method(module), **callbacks}


@torch.no_grad()
def test_accuracy(module: DistillationModule, dataset: torch.utils.data.Dataset) -> float:
    """Top-1 of the student on every image of ``dataset``."""
    module.eval()
    correct = total = 0
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=500):
        correct += int((module(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def measure_cost(args: argparse.Namespace, workdir: Path, teacher: torch.nn.Module, results: dict) -> None:
    """TrainingCost over short runs that alternate KD, CMKD, KD, CMKD, ... so load drifts hit both alike."""
    epochs: dict[str, list[dict]] = {method: [] for method in results}
    for repeat in range(args.cost_repeats):
        for method in results:
            cost = TrainingCost()
            run = trainer(workdir, f"cost_{method.lower()}_{repeat}", 2, [cost], validate=False)
            run.fit(student_module(method, teacher, args.seed), datamodule=datamodule(args))
            epochs[method] += cost.history
            results[method]["cost"] = cost.summary
    for method, history in epochs.items():
        results[method]["epoch_times"] = [e["epoch_time_s"] for e in history]
        results[method]["throughputs"] = [e["samples_per_s"] for e in history]


def figure_heatmap(results: dict, path: Path) -> None:
    gaps = {method: r["heatmap"].gap for method, r in results.items()}
    finite = np.concatenate([g[torch.isfinite(g)].numpy() for g in gaps.values()])
    vmax = max(0.1, float(np.ceil(np.quantile(finite, 0.99) * 10) / 10))  # one scale for both panels
    fig = Figure(figsize=(13.0, 5.8), layout="constrained")
    for ax, (method, gap) in zip(fig.subplots(1, len(gaps)), gaps.items()):
        draw_correlation_gap(
            ax,
            gap,
            vmax=vmax,
            title=f"{results[method]['label']}\nmean off-diagonal = {mean_off_diagonal(gap):.3f}",
        )
    epochs = next(iter(results.values()))["epochs"]
    fig.suptitle(
        "|teacher - student| class correlation of mean logits, KD vs CMKD students after epoch "
        f"{epochs} of {epochs} (validation set, 100 classes; darker = larger)"
    )
    fig.savefig(path, dpi=110, facecolor="white")


def figure_tsne(results: dict, path: Path) -> None:
    fig = Figure(figsize=(15.0, 6.2), layout="constrained")
    for ax, r in zip(fig.subplots(1, len(results)), results.values()):
        title = f"{r['label']}\ntest top-1 {100 * r['top1']:.2f}% (all 100 classes)"
        draw_embedding(ax, r["tsne"].embedding, r["tsne"].labels, title)
    first = next(iter(results.values()))
    n, epochs = len(first["tsne"].labels), first["epochs"]
    fig.suptitle(
        f"t-SNE of the KD and CMKD students' penultimate features after epoch {epochs} of {epochs}: "
        f"{n} test images of classes 0-19"
    )
    fig.savefig(path, dpi=110, facecolor="white")


def figure_correlation(results: dict, path: Path) -> None:
    fig = Figure(figsize=(12.0, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for method, r in results.items():
        history = [h for h in r["corr"].history if h["stage"] == "val"]
        epochs = [h["epoch"] for h in history]  # CorrelationMonitor counts from 1
        colour = COLOURS[method]
        left.plot(epochs, [h["spearman"] for h in history], "-o", color=colour, label=f"{method} Spearman")
        left.plot(epochs, [h["pearson"] for h in history], "--s", color=colour, label=f"{method} Pearson")
        right.plot(epochs, [h["kl"] for h in history], "-o", color=colour, label=method)
    left.set(xlabel="epoch", ylabel="mean per-sample correlation", title="Teacher-student logit correlation")
    right.set(xlabel="epoch", ylabel="KL(teacher || student), T = 1", title="Teacher-student KL divergence")
    left.legend()
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("KD vs CMKD students, validation set, measured by CorrelationMonitor after every epoch")
    fig.savefig(path, dpi=110, facecolor="white")


def figure_cost(results: dict, path: Path) -> None:
    methods = list(results)
    colours = [COLOURS[m] for m in methods]
    fig = Figure(figsize=(12.0, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, unit, title in (
        (axes[0], "epoch_times", "seconds", "Training time per epoch"),
        (axes[1], "throughputs", "samples / s", "Training throughput"),
    ):
        values = [float(np.median(results[m][key])) for m in methods]
        ax.bar(range(len(methods)), values, color=colours, alpha=0.8)
        for i, m in enumerate(methods):  # every measured epoch as a dot
            ax.scatter(np.full(len(results[m][key]), i), results[m][key], color="black", s=12, zorder=3)
        ax.set_xticks(
            range(len(methods)),
            [f"{m}\nmedian {v:,.0f}" if v >= 100 else f"{m}\nmedian {v:.2f}" for m, v in zip(methods, values)],
        )
        ax.set(ylabel=unit, title=f"{title}\n(bar = median, dots = single epochs)")
        ax.margins(y=0.15)
    trainable = [results[m]["cost"]["params_trainable"] for m in methods]
    frozen = results[methods[0]]["cost"]["params_frozen"]
    bars = axes[2].bar(methods, trainable, color=colours)
    axes[2].bar_label(bars, labels=[f"{v:,}" for v in trainable], padding=3)
    axes[2].set(ylabel="parameters", title="Trainable (student) parameters")
    axes[2].margins(y=0.15)
    runs = len(results[methods[0]]["epoch_times"]) // 2
    fig.suptitle(
        f"Training cost of KD vs CMKD on CPU, {torch.get_num_threads()} thread(s), {runs} alternating 2-epoch runs "
        "per method "
        f"(TrainingCost callback; frozen teacher: {frozen:,} parameters)"
    )
    fig.savefig(path, dpi=110, facecolor="white")


FIGURES = ("logit_correlation_heatmap.png", "tsne_embedding.png", "correlation_over_epochs.png", "training_cost.png")


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Stop (exit code 2) before any training when a figure of ``out`` exists and ``overwrite`` is off."""
    existing = [out / name for name in FIGURES if (out / name).exists()]
    if existing and not overwrite:
        raise SystemExit(
            f"make_figures.py: error: {', '.join(str(p) for p in existing)} already exist(s); pass --overwrite to "
            "replace, or --out to write elsewhere. Nothing was trained."
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    refuse_existing(args.out, args.overwrite)
    set_cpu_threads(args.threads)
    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cmkd_figures_"))
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = train_teacher(args, workdir)
    results = {method: train_student(args, workdir, method, teacher) for method in ("KD", "CMKD")}
    for r in results.values():
        r["epochs"] = args.student_epochs
    measure_cost(args, workdir, teacher, results)
    outputs = dict(zip(FIGURES, (figure_heatmap, figure_tsne, figure_correlation, figure_cost), strict=True))
    refuse_existing(args.out, args.overwrite)  # again: another process may have written meanwhile
    for name, draw in outputs.items():
        path = args.out / name
        verb = "replaced" if path.exists() else "wrote"  # exists only with --overwrite (refuse_existing)
        draw(results, path)
        print(f"{verb} {path}")
    print(f"callback outputs under {workdir}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    with quiet_lightning():  # drop Lightning's litlogger tip and known deprecation noise, for this run only
        main()
