"""``cmkd-quickstart``: a teacher, then CE / KD / CMKD students on composed UCI digits, compared in one table.

Everything runs offline on a CPU: the data are scikit-learn's handwritten digits composed two by two into
100 classes (see :class:`datamodules.ComposedDigitsDataModule`). The teacher is trained first; every student
then gets the same budget (epochs, data, batch order, initialisation per seed), so the methods differ only in
their loss. KD runs twice, with its recipe weights (CE 0.1 + KD 0.9, ``kd``) and with CE 1.0 + KD 0.9
(``kd_ce1``). Results go to ``<out>/results.json``, ``<out>/results.csv`` and ``<out>/results.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

from cmkd_lightning.callbacks import CorrelationMonitor, EmbeddingProjection, LogitCorrelationHeatmap, TrainingCost
from cmkd_lightning.functional import spearman_corr
from cmkd_lightning.losses import CMKDLoss, KDLoss
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.optional import require
from cmkd_lightning.utilities.runtime import cpu_threads, quiet_lightning
from datamodules import ComposedDigitsDataModule

Console = require("rich.console", extra="quickstart", purpose="cmkd-quickstart").Console
Table = require("rich.table", extra="quickstart", purpose="cmkd-quickstart").Table

# name -> (losses factory, loss weights, cross-entropy weight)
METHODS: dict[str, tuple[Any, list[float], float]] = {
    "ce": (lambda: [], [], 1.0),
    "kd": (lambda: [KDLoss(temperature=4.0)], [0.9], 0.1),
    "kd_ce1": (lambda: [KDLoss(temperature=4.0)], [0.9], 1.0),
    "cmkd": (lambda: [CMKDLoss(temperature=4.0, beta=4.0, gamma=1.0)], [1.0], 1.0),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmkd-quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="paired student seeds")
    p.add_argument("--epochs", type=int, default=5, help="student epochs (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=6, help="teacher epochs (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=10000, help="composed training images")
    p.add_argument("--eval-size", type=int, default=2000, help="composed val and test images (each)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: $CMKD_CPU_THREADS, else 1: fastest here)"
    )
    p.add_argument("--no-progress", action="store_true", help="plain output (no rich progress bars)")
    p.add_argument("--no-figures", action="store_true", help="skip the figure callbacks (heatmap, t-SNE, ...)")
    args = p.parse_args(argv)
    try:
        args.threads = cpu_threads(args.threads) or torch.get_num_threads()  # 0: torch's default
    except ValueError as err:
        p.error(str(err).replace("`cpu_threads`", "`--threads`"))
    for name in ("epochs", "teacher_epochs", "train_size", "eval_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"Expected `--{name.replace('_', '-')}` to be >= 1, but got {getattr(args, name)}.")
    return args


def _figure_callbacks(args: argparse.Namespace, dirpath: Path) -> list[Any]:
    """The paper's figures for one run: correlation per epoch, logit-correlation gap, t-SNE, training cost."""
    if args.no_figures:
        return []
    return [
        CorrelationMonitor(),
        LogitCorrelationHeatmap(every_n_epochs=args.epochs, matrix="correlation_gap", vmax=0.4, dirpath=dirpath),
        EmbeddingProjection(num_samples=500, max_classes=20, dirpath=dirpath, num_threads=args.threads),
        TrainingCost(dirpath=dirpath),
    ]


def _trainer(args: argparse.Namespace, epochs: int, out: Path, callbacks: list[Any] | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,
        callbacks=(callbacks or []) + ([] if args.no_progress else [RichProgressBar(leave=False)]),
        num_sanity_val_steps=0,
        default_root_dir=out,
    )


@torch.no_grad()
def _evaluate(module: DistillationModule, teacher: torch.nn.Module, loader: Any) -> dict[str, float]:
    module.eval()
    teacher.eval()
    zs, zt, ys = [], [], []
    for x, y in loader:
        zs.append(module(x))
        zt.append(teacher(x))
        ys.append(y)
    s, t, y = torch.cat(zs), torch.cat(zt), torch.cat(ys)
    k = min(5, s.shape[1])
    return {
        "top1": 100 * float((s.argmax(1) == y).float().mean()),
        "top5": 100 * float((s.topk(k, dim=1).indices == y[:, None]).any(1).float().mean()),
        "agreement": 100 * float((s.argmax(1) == t.argmax(1)).float().mean()),
        "spearman": float(spearman_corr(s, t).mean()),
    }


def _chart(summary: dict[str, dict[str, float]], teacher_top1: float, path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "top1", "Test Top-1 (%)"), (axes[1], "spearman", "Spearman(teacher, student)")):
        means = [summary[n][f"{key}_mean"] for n in names]
        stds = [summary[n][f"{key}_std"] for n in names]
        colors = {"ce": "#9e9e9e", "kd": "#4c72b0", "kd_ce1": "#8fb0d9", "cmkd": "#dd8452"}
        bars = ax.bar(names, means, yerr=stds, capsize=6, color=[colors[n] for n in names])
        for bar, m, sd in zip(bars, means, stds):
            ax.annotate(
                f"{m:.2f}" if key == "spearman" else f"{m:.1f}",
                (bar.get_x() + bar.get_width() / 2, m + sd),
                ha="center",
                va="bottom",
                fontsize=9,
                xytext=(0, 3),
                textcoords="offset points",
            )
        if key == "top1":
            ax.axhline(teacher_top1, color="black", ls="--", lw=1, label=f"teacher {teacher_top1:.1f}%")
            ax.legend(loc="lower right", fontsize=8)
            ax.set_ylim(min(means) - 10, 100)
        else:
            ax.set_ylim(0, 1)
        ax.set_ylabel(label)
        ax.set_xlabel("student trained with")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Composed digits, 100 classes: mean ± std over {n_seeds} paired seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the teacher and every student; write and return the results."""
    with quiet_lightning(), warnings.catch_warnings():
        # The in-memory digits load in the main process on purpose; Lightning's worker advice does not apply.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=max(120, Console().width))
    data = ComposedDigitsDataModule(
        num_digits=2,
        train_size=args.train_size,
        val_size=args.eval_size,
        test_size=args.eval_size,
        batch_size=128,
        seed=0,
    )
    data.setup()
    t0 = time.perf_counter()
    console.rule("[bold]1/2 teacher (digits_teacher, cross-entropy)")
    L.seed_everything(1234, verbose=False)
    teacher_module = DistillationModule("digits_teacher", num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    _trainer(args, args.teacher_epochs, out).fit(teacher_module, data)
    teacher = teacher_module.student
    teacher_eval = _evaluate(teacher_module, teacher, data.test_dataloader())
    teacher_time = time.perf_counter() - t0
    console.print(
        f"teacher: Top-1 {teacher_eval['top1']:.2f}%  Top-5 {teacher_eval['top5']:.2f}%  ({teacher_time:.0f} s)"
    )

    rows: list[dict[str, Any]] = []
    console.rule("[bold]2/2 students (digits_student), same budget per method")
    for seed in args.seeds:
        for method in args.methods:
            make_losses, weights, ce_weight = METHODS[method]
            L.seed_everything(seed, verbose=False)
            module = DistillationModule(
                "digits_student",
                teacher=teacher if method != "ce" else None,
                losses=make_losses(),
                loss_weights=weights,
                ce_weight=ce_weight,
                num_classes=data.num_classes,
                lr_scheduler=WarmupCosine,  # SGD lr 0.05 (the default), cosine over the epochs
            )
            callbacks = (
                _figure_callbacks(args, out / "figures" / method) if method != "ce" and seed == args.seeds[0] else []
            )
            start = time.perf_counter()
            _trainer(args, args.epochs, out, callbacks).fit(module, data)
            seconds = time.perf_counter() - start
            row = {
                "method": method,
                "seed": seed,
                **_evaluate(module, teacher, data.test_dataloader()),
                "train_seconds": seconds,
            }
            rows.append(row)
            console.print(
                f"seed {seed} {method:>5}: Top-1 {row['top1']:.2f}%  agreement {row['agreement']:.1f}%  "
                f"Spearman {row['spearman']:.3f}  ({seconds:.0f} s)"
            )

    summary: dict[str, dict[str, float]] = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {}
        for key in ("top1", "top5", "agreement", "spearman", "train_seconds"):
            vals = [r[key] for r in mine]
            summary[method][f"{key}_mean"] = statistics.fmean(vals)
            summary[method][f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0

    table = Table(title=f"Composed digits (100 classes), test set, {len(args.seeds)} paired seed(s), mean ± std")
    for col in ("student", "Top-1 %", "Top-5 %", "agree w/ teacher %", "Spearman", "train s"):
        table.add_column(col, justify="right")
    table.add_row(
        "teacher", f"{teacher_eval['top1']:.2f}", f"{teacher_eval['top5']:.2f}", "-", "-", f"{teacher_time:.0f}"
    )
    for method, s in summary.items():
        table.add_row(
            method,
            *(
                f"{s[f'{k}_mean']:.{p}f} ± {s[f'{k}_std']:.{p}f}"
                for k, p in (("top1", 2), ("top5", 2), ("agreement", 1), ("spearman", 3))
            ),
            f"{s['train_seconds_mean']:.0f}",
        )
    console.print(table)

    result = {
        "data": {
            "num_digits": 2,
            "num_classes": data.num_classes,
            "train_size": args.train_size,
            "eval_size": args.eval_size,
        },
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "seeds": args.seeds,
        "teacher": teacher_eval,
        "summary": summary,
        "runs": rows,
        "total_seconds": time.perf_counter() - t0,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _chart(summary, teacher_eval["top1"], out / "results.png", len(args.seeds))
    console.print(
        f"Wrote {out / 'results.json'}, {out / 'results.csv'} and {out / 'results.png'} "
        f"in {result['total_seconds']:.0f} s."
    )
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns None, so the process exits 0 after success)."""
    run(_parse(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
