"""``cmkd-compare``: train several distillation methods over paired seeds and compare them with paired tests.

The quickstart's table, generalised: any number of methods (built-in names or ``cmkd`` YAML configs), any number
of seeds, 10, 100 or 1000 classes of composed digits. One teacher is trained (or loaded) once; then, for every
seed, every method trains a student from the *same* initial weights on the *same* batches for the same number of
epochs (paired seeds), so the methods differ only in their loss. The command prints mean ± std per method, the
paired differences against a reference method with a paired t-test and a Wilcoxon signed-rank test, and writes
``results.json``, ``results.csv`` (one row per run) and ``results.png`` (means, std and every seed).

Example (1000 classes, 5 paired seeds)::

    cmkd-compare --num-digits 3 --methods ce kd kd_ce1 dist cmkd --seeds 0 1 2 3 4 --out runs/compare-x3
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from cmkd_lightning._optional import require
from cmkd_lightning.losses import CMKDLoss, DISTLoss, KDLoss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.models import create_model
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.quickstart import _evaluate
from cmkd_lightning.schedules import WarmupCosine
from datamodules import ComposedDigitsDataModule

METRICS = ("top1", "top5", "agreement", "spearman")


@dataclass
class Method:
    """One way of training the student: distillation losses, their weights and the cross-entropy weight.

    Args:
        name: label in tables and files.
        losses: builds fresh loss objects for every run (``lambda: [KDLoss(4.0)]``); empty for cross-entropy only.
        loss_weights: one weight per loss.
        ce_weight: weight of the cross-entropy on labels.
        description: one line for the table's legend.

    Example:
        >>> m = Method("kd", lambda: [KDLoss(temperature=4.0)], [0.9], ce_weight=0.1)
        >>> m.name, type(m.losses()[0]).__name__
        ('kd', 'KDLoss')
    """

    name: str
    losses: Callable[[], list[DistillationLoss]] = field(default=lambda: [])
    loss_weights: list[float] = field(default_factory=list)
    ce_weight: float = 1.0
    description: str = ""


BUILTIN_METHODS: dict[str, Method] = {
    "ce": Method("ce", description="cross-entropy only"),
    "kd": Method("kd", lambda: [KDLoss(temperature=4.0)], [0.9], 0.1, "CE 0.1 + KD 0.9, T = 4 (the recipe)"),
    "kd_ce1": Method("kd_ce1", lambda: [KDLoss(temperature=4.0)], [1.0], 1.0, "CE 1 + KD 1, T = 4"),
    "dist": Method(
        "dist",
        lambda: [DISTLoss(temperature=4.0, beta=1.0, gamma=1.0)],
        [2.0],
        1.0,
        "CE 1 + 2 * DIST (tau = 4, beta = gamma = 1)",
    ),
    "cmkd": Method("cmkd", lambda: [CMKDLoss()], [1.0], 1.0, "CE 1 + CMKDLoss() defaults"),
    "cmkd_pearson": Method(
        "cmkd_pearson",
        lambda: [CMKDLoss(spearman=False)],
        [1.0],
        1.0,
        "CE 1 + CMKD without its Spearman term (the Table VI ablation switch): beta * sqrt(C) * L_P",
    ),
    "cmkd_paper": Method(
        "cmkd_paper",
        lambda: [CMKDLoss(temperature=4.0, beta=4.0, gamma=1.0, pearson_scale="paper", entropy_source="loss")],
        [1.0],
        1.0,
        "CE 1 + CMKD as the paper writes it (T = 4, beta = 4, gamma = 1, pearson_scale 1, entropy of the loss's p_t)",
    ),
    "cmkd_loss_entropy": Method(
        "cmkd_loss_entropy",
        lambda: [CMKDLoss(entropy_source="loss")],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss() defaults but Eq. 14's entropy on the loss's softmax(zscore(z_t) / T)",
    ),
}


def method_from_config(path: str | Path) -> Method:
    """A :class:`Method` from a ``cmkd`` YAML config: its ``model.init_args`` losses, weights and CE weight.

    Only the loss part of the config is used (the student, teacher, data and schedule are the comparison's).

    Args:
        path: a ``cmkd fit`` config such as ``examples/configs/digits/cmkd.yaml``.

    Returns:
        A method named after the file's stem.
    """
    import importlib

    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected `methods` entries to be built-in names or config files, but {path} is neither."
        )
    config = yaml.safe_load(path.read_text()) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    specs = init.get("losses") or []
    if isinstance(specs, dict):
        specs = [specs]

    def build() -> list[DistillationLoss]:
        losses = []
        for spec in specs:
            module_name, _, cls_name = spec["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module_name), cls_name)
            losses.append(cls(**(spec.get("init_args") or {})))
        return losses

    weights = [float(w) for w in init.get("loss_weights") or [1.0] * len(specs)]
    return Method(path.stem, build, weights, float(init.get("ce_weight", 1.0)), f"from {path}")


def resolve_methods(entries: Sequence[str | Method]) -> list[Method]:
    """Built-in names, config paths or :class:`Method` objects to methods (names must be unique)."""
    methods = []
    for entry in entries:
        if isinstance(entry, Method):
            methods.append(entry)
        elif entry in BUILTIN_METHODS:
            methods.append(BUILTIN_METHODS[entry])
        elif str(entry).endswith((".yaml", ".yml")):
            methods.append(method_from_config(entry))
        else:
            raise ValueError(
                f"Expected each method to be one of {sorted(BUILTIN_METHODS)} or a .yaml config, but got {entry!r}."
            )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"Expected unique method names, but got {names}.")
    return methods


def _trainer(epochs: int, out: Path, progress: bool = False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=out,
    )


def train_teacher(
    data: ComposedDigitsDataModule, epochs: int, out: Path, arch: str = "digits_teacher", seed: int = 1234
) -> nn.Module:
    """Train a teacher with cross-entropy (SGD lr 0.05, cosine), or load ``<out>/teacher-<arch>-<k>d-<E>ep.pt``."""
    path = out / f"teacher-{arch}-{data.num_digits}d-{data.sizes['train']}-{epochs}ep.pt"
    teacher = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    if path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        return teacher.eval()
    L.seed_everything(seed, verbose=False)
    module = DistillationModule(teacher, num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    _trainer(epochs, out).fit(module, data)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), path)
    return teacher.eval()


def fit_student(
    method: Method,
    seed: int,
    data: ComposedDigitsDataModule,
    teacher: nn.Module,
    epochs: int,
    out: Path,
    arch: str = "digits_student",
    lr: float = 0.05,
) -> DistillationModule:
    """Train one student: ``seed`` fixes its initial weights, the data module fixes the batch order."""
    L.seed_everything(seed, verbose=False)
    student = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    losses = method.losses()
    module = DistillationModule(
        student,
        teacher=teacher if losses else None,
        losses=losses,
        loss_weights=method.loss_weights if losses else None,
        ce_weight=method.ce_weight,
        num_classes=data.num_classes,
        optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=WarmupCosine,
    )
    _trainer(epochs, out).fit(module, data)
    return module


def train_student(
    method: Method, seed: int, data: ComposedDigitsDataModule, teacher: nn.Module, epochs: int, out: Path
) -> dict[str, Any]:
    """:func:`fit_student`, then the test metrics (Top-1, Top-5, agreement and Spearman with the teacher)."""
    start = time.perf_counter()
    module = fit_student(method, seed, data, teacher, epochs, out)
    seconds = time.perf_counter() - start
    return {
        "method": method.name,
        "seed": seed,
        **_evaluate(module, teacher, data.test_dataloader()),
        "seconds": seconds,
    }


def method_fingerprint(method: Method) -> str:
    """What identifies a method's training: CE weight, loss weights, and every loss's class and scalar settings.

    Runs cached under ``<out>/runs.jsonl`` are reused only when their fingerprint still matches, so a changed
    default (e.g. of :class:`~cmkd_lightning.losses.CMKDLoss`) retrains instead of reusing a stale number.
    """
    parts = [f"ce={method.ce_weight!r}", f"w={method.loss_weights!r}"]
    for loss in method.losses():
        settings = {k: v for k, v in sorted(vars(loss).items()) if isinstance(v, (bool, int, float, str, type(None)))}
        settings.pop("training", None)
        parts.append(f"{type(loss).__module__}.{type(loss).__qualname__}{settings}")
    return ";".join(parts)


def _run_key(method: Method, seed: int, setting: dict[str, Any]) -> str:
    return json.dumps({"method": method.name, "seed": seed, "fp": method_fingerprint(method), **setting})


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    cache: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = entry["row"]
    return cache


def summarize(rows: list[dict[str, Any]], methods: Sequence[str], reference: str | None) -> dict[str, Any]:
    """Mean ± std per method and metric, and paired differences against ``reference`` with p-values.

    The difference is ``method - reference`` over the seeds both ran; ``t_p`` is scipy's two-sided paired t-test
    (``ttest_rel``), ``wilcoxon_p`` its two-sided Wilcoxon signed-rank test (exact for small samples; at 5 seeds
    its smallest possible p is 0.0625). ``nan`` where undefined (fewer than 2 pairs, all differences zero).

    Example:
        >>> rows = [{"method": m, "seed": s, "top1": v} for m, s, v in [("a", 0, 1.0), ("a", 1, 2.0),
        ...         ("b", 0, 2.0), ("b", 1, 4.0)]]
        >>> s = summarize(rows, ["a", "b"], "a")
        >>> s["methods"]["b"]["top1"]["mean"], s["paired"]["b"]["top1"]["mean_diff"]
        (3.0, 1.5)
    """
    stats = require("scipy.stats", extra="quickstart", purpose="cmkd-compare's paired statistics")

    metrics = [k for k in METRICS if k in rows[0]]
    out: dict[str, Any] = {"methods": {}, "paired": {}, "reference": reference}
    by = {(r["method"], r["seed"]): r for r in rows}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        out["methods"][m] = {}
        for k in metrics:
            vals = [float(r[k]) for r in mine]
            out["methods"][m][k] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
                "n": len(vals),
            }
    if reference is None:
        return out
    for m in methods:
        if m == reference:
            continue
        seeds = sorted(s for (name, s) in by if name == m and (reference, s) in by)
        out["paired"][m] = {}
        for k in metrics:
            a = [float(by[(m, s)][k]) for s in seeds]
            b = [float(by[(reference, s)][k]) for s in seeds]
            diffs = [x - y for x, y in zip(a, b)]
            t_p = w_p = math.nan
            if len(diffs) >= 2 and any(d != 0 for d in diffs):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t_p = float(stats.ttest_rel(a, b).pvalue)
                    w_p = float(stats.wilcoxon(diffs).pvalue)
            out["paired"][m][k] = {
                "mean_diff": statistics.fmean(diffs) if diffs else math.nan,
                "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                "wins": sum(d > 0 for d in diffs),
                "n": len(diffs),
                "diffs": diffs,
                "t_p": t_p,
                "wilcoxon_p": w_p,
            }
    return out


def format_tables(summary: dict[str, Any], teacher: dict[str, float] | None = None, title: str = "") -> str:
    """Markdown tables: mean ± std per method, then the paired differences against the reference."""
    lines = [f"### {title}" if title else "", "", "| method | Top-1 % | Top-5 % | agreement % | Spearman |"]
    lines.append("|---|---|---|---|---|")
    if teacher:
        lines.append(f"| teacher | {teacher['top1']:.2f} | {teacher['top5']:.2f} | - | - |")
    for m, s in summary["methods"].items():
        cells = [f"{s[k]['mean']:.{p}f} ± {s[k]['std']:.{p}f}" for k, p in zip(METRICS, (2, 2, 1, 3)) if k in s]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ref = summary.get("reference")
    if ref and summary["paired"]:
        lines += ["", f"Paired differences (method − {ref}), over seeds:", ""]
        lines.append("| method | ΔTop-1 (wins) | t-test p | Wilcoxon p | ΔSpearman (wins) | t-test p |")
        lines.append("|---|---|---|---|---|---|")
        for m, d in summary["paired"].items():
            t1, sp = d["top1"], d.get("spearman")
            row = f"| {m} | {t1['mean_diff']:+.2f} ± {t1['std_diff']:.2f} ({t1['wins']}/{t1['n']}) | "
            row += f"{t1['t_p']:.3g} | {t1['wilcoxon_p']:.3g} | "
            row += f"{sp['mean_diff']:+.3f} ({sp['wins']}/{sp['n']}) | {sp['t_p']:.3g} |" if sp else "- | - |"
            lines.append(row)
    return "\n".join(lines).strip() + "\n"


def plot(
    rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str, teacher_top1: float | None
) -> None:
    """Bars of the means with std error bars and one dot per seed, for Top-1 and Spearman."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 2), 3.8))
    for ax, key, label in ((axes[0], "top1", "test Top-1 (%)"), (axes[1], "spearman", "Spearman(teacher, student)")):
        means = [summary["methods"][n][key]["mean"] for n in names]
        stds = [summary["methods"][n][key]["std"] for n in names]
        ax.bar(names, means, yerr=stds, capsize=5, color="#8fb0d9", edgecolor="#4c72b0")
        for i, n in enumerate(names):
            vals = [r[key] for r in rows if r["method"] == n]
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        if key == "top1" and teacher_top1 is not None:
            ax.axhline(teacher_top1, color="black", ls="--", lw=1, label=f"teacher {teacher_top1:.1f}%")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_outputs(
    stem: Path,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    tables: str,
    title: str,
    teacher_top1: float | None,
) -> None:
    """``<stem>.json`` (everything), ``.csv`` (one row per run), ``.md`` (the tables) and ``.png`` (the plot)."""
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".md").write_text(tables)
    plot(rows, summary, stem.with_suffix(".png"), title, teacher_top1)


def compare(
    methods: Sequence[str | Method],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    num_digits: int = 3,
    train_size: int = 30000,
    eval_size: int = 5000,
    epochs: int = 4,
    teacher_epochs: int = 15,
    teacher_checkpoint: str | Path | None = None,
    reference: str | None = None,
    out: str | Path = "runs/compare",
    threads: int = 1,
    reuse: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train every method over paired seeds on composed digits and compare them (the Python API of the command).

    Args:
        methods: built-in names (:data:`BUILTIN_METHODS`), ``cmkd`` YAML configs or :class:`Method` objects.
        seeds: student seeds; a seed fixes the student's initial weights, shared by all methods.
        num_digits: digits per image (10 ** num_digits classes).
        train_size: composed training images (the batch order is the data module's, the same for every run).
        eval_size: composed validation and test images each.
        epochs: student epochs (SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine), the same for every method.
        teacher_epochs: epochs of the teacher when it is trained here (cached under ``out``).
        teacher_checkpoint: a ``digits_teacher`` state_dict to load instead.
        reference: the method the paired differences are taken against (default: the last method).
        out: output directory.
        threads: torch threads.
        reuse: reuse runs recorded in ``<out>/runs.jsonl`` with the same method fingerprint, seed, data and
            epochs (so an interrupted comparison resumes, and several processes with different ``seeds`` can
            fill one directory before a last call summarises them all).
        verbose: print progress and the tables.

    Returns:
        ``{"teacher": ..., "runs": [...], "summary": ..., "config": ...}`` (also written to ``results.json``).
    """
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    resolved = resolve_methods(methods)
    names = [m.name for m in resolved]
    reference = names[-1] if reference is None else reference
    if reference not in names:
        raise ValueError(f"Expected `reference` to be one of the methods {names}, but got {reference!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = ComposedDigitsDataModule(
        num_digits=num_digits, train_size=train_size, val_size=eval_size, test_size=eval_size, batch_size=128
    )
    data.setup()
    t0 = time.perf_counter()
    if teacher_checkpoint is not None:
        teacher = create_model("digits_teacher", num_classes=data.num_classes, num_digits=num_digits)
        teacher.load_state_dict(torch.load(teacher_checkpoint, weights_only=True))
        teacher.eval()
    else:
        teacher = train_teacher(data, teacher_epochs, out)
    teacher_eval = _evaluate(DistillationModule(teacher, num_classes=data.num_classes), teacher, data.test_dataloader())
    if verbose:
        print(f"teacher: Top-1 {teacher_eval['top1']:.2f}% Top-5 {teacher_eval['top5']:.2f}%", flush=True)
    rows: list[dict[str, Any]] = []
    cache_path = out / "runs.jsonl"
    setting = {"num_digits": num_digits, "train_size": train_size, "eval_size": eval_size, "epochs": epochs}
    setting["teacher"] = str(Path(teacher_checkpoint).resolve()) if teacher_checkpoint else f"{teacher_epochs}ep"
    for seed in seeds:
        for method in resolved:
            key = _run_key(method, seed, setting)
            row = _load_cache(cache_path).get(key) if reuse else None
            cached = row is not None
            if row is None:
                row = train_student(method, seed, data, teacher, epochs, out)
                with cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "row": row}) + "\n")
            rows.append(row)
            if verbose:
                print(
                    f"seed {seed} {method.name:>12}: Top-1 {row['top1']:6.2f}%  Spearman {row['spearman']:.3f}  "
                    f"({row['seconds']:.0f} s{', cached' if cached else ''})",
                    flush=True,
                )
    summary = summarize(rows, names, reference)
    title = (
        f"Composed digits x{num_digits} ({data.num_classes} classes), {train_size} train images, {epochs} epochs, "
        f"{len(seeds)} paired seeds"
    )
    tables = format_tables(summary, teacher_eval, title)
    result = {
        "config": {
            "num_digits": num_digits,
            "num_classes": data.num_classes,
            "train_size": train_size,
            "eval_size": eval_size,
            "epochs": epochs,
            "teacher_epochs": teacher_epochs,
            "seeds": list(seeds),
            "methods": {m.name: m.description for m in resolved},
            "threads": threads,
            "torch": torch.__version__,
        },
        "teacher": teacher_eval,
        "runs": rows,
        "summary": summary,
        "total_seconds": time.perf_counter() - t0,
    }
    _write_outputs(out / "results", result, rows, summary, tables, title, teacher_eval["top1"])
    if verbose:
        print(tables)
        print(f"Wrote {out}/results.{{json,csv,md,png}} in {result['total_seconds']:.0f} s.")
    return result


def summarize_recorded(
    out: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Tables, ``final.{json,csv,md,png}`` from the runs recorded in ``<out>/runs.jsonl``, without training.

    For comparisons filled by several processes (or over several sessions): every recorded run of the named
    ``methods`` (and ``seeds``, default all) is used; the latest record of a (method, seed) wins. All of them
    must share the data, epochs and teacher, or this raises ``ValueError``.
    """
    out = Path(out)
    path = out / "runs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"Expected recorded runs in {path}, but it does not exist.")
    chosen: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        key, row = json.loads(entry["key"]), entry["row"]
        if row["method"] in methods and (seeds is None or row["seed"] in seeds):
            chosen[(row["method"], row["seed"])] = (key, row)
    if not chosen:
        raise ValueError(f"Expected recorded runs of {list(methods)} in {path}, but found none.")
    settings = set()
    for key, _ in chosen.values():
        shared = {k: v for k, v in key.items() if k not in ("method", "seed", "fp")}
        shared["teacher"] = Path(shared.get("teacher", "")).name  # same file, relative or absolute path
        settings.add(json.dumps(shared, sort_keys=True))
    if len(settings) != 1:
        raise ValueError(f"Expected the recorded runs to share data, epochs and teacher, but found {sorted(settings)}.")
    setting = json.loads(settings.pop())
    names = [m for m in methods if any(k[0] == m for k in chosen)]
    reference = names[-1] if reference is None else reference
    rows = [chosen[k][1] for k in sorted(chosen, key=lambda k: (k[1], names.index(k[0])))]
    summary = summarize(rows, names, reference)
    n_seeds = len({r["seed"] for r in rows})
    title = (
        f"Composed digits x{setting['num_digits']} ({10 ** setting['num_digits']} classes), {setting['train_size']} "
        f"train images, {setting['epochs']} epochs, {n_seeds} paired seeds"
    )
    teacher = None
    if (out / "results.json").is_file():
        teacher = json.loads((out / "results.json").read_text()).get("teacher")
    tables = format_tables(summary, teacher, title)
    result = {"config": setting, "teacher": teacher, "runs": rows, "summary": summary}
    _write_outputs(out / "final", result, rows, summary, tables, title, teacher["top1"] if teacher else None)
    if verbose:
        print(tables)
        print(f"Wrote {out}/final.{{json,csv,md,png}}.")
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmkd-compare", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["ce", "kd", "kd_ce1", "dist", "cmkd"], help="names or configs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paired student seeds")
    p.add_argument("--num-digits", type=int, default=3, help="digits per image: 10**k classes (default: 3)")
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--eval-size", type=int, default=5000, help="val and test images (each)")
    p.add_argument("--epochs", type=int, default=4, help="student epochs (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--teacher-checkpoint", default=None, help="digits_teacher state_dict to load instead")
    p.add_argument("--reference", default=None, help="method to take paired differences against (default: last)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-reuse", action="store_true", help="retrain runs already recorded in <out>/runs.jsonl")
    p.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing: tables and final.{json,csv,md,png} from the runs recorded in <out>/runs.jsonl",
    )
    args = p.parse_args(argv)
    for name in ("epochs", "teacher_epochs", "train_size", "eval_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"Expected `--{name.replace('_', '-')}` to be >= 1, but got {getattr(args, name)}.")
    return args


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns None, so the process exits 0 after success)."""
    a = _parse(argv)
    if a.summarize_only:
        summarize_recorded(a.out, a.methods, a.seeds, a.reference)
        return
    from cmkd_lightning.runtime import quiet_lightning

    with quiet_lightning():  # Lightning's known noise, for this run only
        _compare_from_args(a)


def _compare_from_args(a: argparse.Namespace) -> None:
    compare(
        a.methods,
        a.seeds,
        num_digits=a.num_digits,
        train_size=a.train_size,
        eval_size=a.eval_size,
        epochs=a.epochs,
        teacher_epochs=a.teacher_epochs,
        teacher_checkpoint=a.teacher_checkpoint,
        reference=a.reference,
        out=a.out,
        threads=a.threads,
        reuse=not a.no_reuse,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
