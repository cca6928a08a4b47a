"""``cmkd-quickstart``: a teacher, then CE / KD / CMKD students on composed UCI digits, compared in one table.

Everything runs offline on a CPU: the data are scikit-learn's handwritten digits composed two by two into
100 classes (see :class:`datamodules.ComposedDigitsDataModule`). The teacher is trained first; every student
then gets the same budget (epochs, data, batch order, initialisation per seed), so the methods differ only in
their loss. The methods are ``cmkd-compare``'s built-ins (one table, :mod:`cmkd_lightning.experiments.methods`):
by default ``ce``, ``kd`` (CE 0.1 + KD 0.9, KD's recipe), ``kd_ce1`` (CE 1 + KD 1) and ``cmkd`` (CE 1 +
``CMKDLoss()``). Results go to ``<out>/results.{json,csv,md,png}``, and the figures of the first seed's distilled
students to ``<out>/figures/<method>/``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cmkd_lightning.callbacks import CorrelationMonitor, EmbeddingProjection, LogitCorrelationHeatmap, TrainingCost
from cmkd_lightning.callbacks.progress_bar import EpochRichProgressBar
from cmkd_lightning.experiments.methods import BUILTIN_METHODS, methods_help, resolve_methods
from cmkd_lightning.experiments.outputs import format_tables, summarize, write_outputs
from cmkd_lightning.experiments.training import digits_data, evaluate, isolated_run, train_student, train_teacher
from cmkd_lightning.utilities.optional import require
from cmkd_lightning.utilities.runtime import cpu_threads, quiet_lightning

Console = require("rich.console", extra="quickstart", purpose="cmkd-quickstart").Console
Table = require("rich.table", extra="quickstart", purpose="cmkd-quickstart").Table

DEFAULT_METHODS = ("ce", "kd", "kd_ce1", "cmkd")
NUM_DIGITS = 2
DESCRIPTION = """\
A teacher, then students of several distillation methods on composed UCI digits (100 classes), compared in one
table. Offline, on a CPU: scikit-learn's handwritten digits composed two by two. Every student gets the same
epochs, data, batch order and initial weights per seed, so the methods differ only in their loss.

files under --out:
  results.json, results.csv, results.md, results.png   every run, the summary and paired differences, the plot
  figures/<method>/                                    the first seed's figures of each distilled student
                                                       (skipped with --no-figures)"""


def build_parser() -> argparse.ArgumentParser:
    """The ``cmkd-quickstart`` argument parser; ``--help`` lists the methods and every option's default."""
    p = argparse.ArgumentParser(
        prog="cmkd-quickstart",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods (--methods; the loss is CE weight * cross-entropy + the listed terms):\n" + methods_help(),
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="paired student seeds (default: 0 1 2)")
    p.add_argument("--epochs", type=int, default=5, help="student epochs (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=6, help="teacher epochs (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=10000, help="composed training images (default: %(default)s)")
    p.add_argument(
        "--eval-size", type=int, default=2000, help="composed val and test images, each (default: %(default)s)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=list(BUILTIN_METHODS),
        metavar="METHOD",
        help="built-in methods, listed below; the paired differences are taken against the last "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; 0: torch's default (default: $CMKD_CPU_THREADS, else 1: fastest here)",
    )
    p.add_argument("--no-progress", action="store_true", help="plain output, no rich progress bars (default: off)")
    p.add_argument(
        "--no-figures", action="store_true", help="skip the figure callbacks: heatmap, t-SNE, ... (default: off)"
    )
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        cpu_threads(args.threads)
    except ValueError as err:
        p.error(str(err).replace("`cpu_threads`", "`--threads`"))
    for name in ("epochs", "teacher_epochs", "train_size", "eval_size"):
        if getattr(args, name) < 1:
            p.error(f"Expected `--{name.replace('_', '-')}` to be >= 1, but got {getattr(args, name)}.")
    if len(set(args.methods)) != len(args.methods):
        p.error(f"Expected `--methods` to name each method once, but got {args.methods}.")
    return args


def _figure_callbacks(args: argparse.Namespace, dirpath: Path, threads: int) -> list[Any]:
    """The paper's figures for one run: correlation per epoch, logit-correlation gap, t-SNE, training cost."""
    if args.no_figures:
        return []
    return [
        CorrelationMonitor(),
        LogitCorrelationHeatmap(every_n_epochs=args.epochs, matrix="correlation_gap", vmax=0.4, dirpath=dirpath),
        EmbeddingProjection(num_samples=500, max_classes=20, dirpath=dirpath, num_threads=threads),
        TrainingCost(dirpath=dirpath),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the teacher and every student; write and return the results.

    The caller's torch thread count, warning filters and random states are restored when it returns or raises.
    """
    with isolated_run(args.threads) as threads, quiet_lightning():
        return _run(args, threads)


def _run(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    methods = resolve_methods(args.methods)
    names = [m.name for m in methods]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=max(120, Console().width))
    progress = not args.no_progress

    def bars() -> list[Any]:
        return [EpochRichProgressBar(leave=False)] if progress else []

    data = digits_data(NUM_DIGITS, args.train_size, args.eval_size)
    t0 = time.perf_counter()
    console.rule("[bold]1/2 teacher (digits_teacher, cross-entropy)")
    teacher = train_teacher(
        data, args.teacher_epochs, out, cache=False, validate=True, progress=progress, callbacks=bars()
    )
    teacher_eval = evaluate(teacher, teacher, data.test_dataloader())
    teacher_time = time.perf_counter() - t0
    console.print(
        f"teacher: Top-1 {teacher_eval['top1']:.2f}%  Top-5 {teacher_eval['top5']:.2f}%  ({teacher_time:.0f} s)"
    )

    rows: list[dict[str, Any]] = []
    console.rule("[bold]2/2 students (digits_student), same budget per method")
    for seed in args.seeds:
        for method in methods:
            figures = bool(method.losses()) and seed == args.seeds[0]  # the distilled students of the first seed
            callbacks = _figure_callbacks(args, out / "figures" / method.name, threads) if figures else []
            row = train_student(
                method,
                seed,
                data,
                teacher,
                args.epochs,
                out,
                validate=True,
                progress=progress,
                callbacks=callbacks + bars(),
            )
            rows.append(row)
            console.print(
                f"seed {seed} {method.name:>5}: Top-1 {row['top1']:.2f}%  agreement {row['agreement']:.1f}%  "
                f"Spearman {row['spearman']:.3f}  ({row['seconds']:.0f} s)"
            )

    summary = summarize(rows, names, reference=names[-1])
    title = f"Composed digits ({data.num_classes} classes), test set, {len(args.seeds)} paired seed(s), mean ± std"
    table = Table(title=title)
    for col in ("student", "Top-1 %", "Top-5 %", "agree w/ teacher %", "Spearman", "train s"):
        table.add_column(col, justify="right")
    table.add_row(
        "teacher", f"{teacher_eval['top1']:.2f}", f"{teacher_eval['top5']:.2f}", "-", "-", f"{teacher_time:.0f}"
    )
    for name, s in summary["methods"].items():
        seconds = statistics.fmean(r["seconds"] for r in rows if r["method"] == name)
        table.add_row(
            name,
            *(
                f"{s[k]['mean']:.{p}f} ± {s[k]['std']:.{p}f}"
                for k, p in (("top1", 2), ("top5", 2), ("agreement", 1), ("spearman", 3))
            ),
            f"{seconds:.0f}",
        )
    console.print(table)
    for method in methods:
        console.print(f"  {method.name}: {method.description}")

    result = {
        "config": {
            "num_digits": NUM_DIGITS,
            "num_classes": data.num_classes,
            "train_size": args.train_size,
            "eval_size": args.eval_size,
            "epochs": args.epochs,
            "teacher_epochs": args.teacher_epochs,
            "seeds": list(args.seeds),
            "methods": {m.name: m.description for m in methods},
            "threads": threads,
            "torch": torch.__version__,
        },
        "teacher": teacher_eval,
        "runs": rows,
        "summary": summary["methods"],
        "paired": summary["paired"],
        "reference": summary["reference"],
        "total_seconds": time.perf_counter() - t0,
    }
    tables = format_tables(summary, teacher_eval, title)
    write_outputs(out / "results", result, rows, summary, tables, title, teacher_eval["top1"])
    console.print(f"Wrote {out}/results.{{json,csv,md,png}} in {result['total_seconds']:.0f} s.")
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns None, so the process exits 0 after success)."""
    run(_parse(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
