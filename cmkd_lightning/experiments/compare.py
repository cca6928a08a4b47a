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
import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
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

from cmkd_lightning.experiments.quickstart import _evaluate
from cmkd_lightning.losses import CMKDLoss, DISTLoss, KDLoss, ReviewKDLoss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.models import create_model
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.schedules import WarmupCosine
from cmkd_lightning.utilities.optional import require
from datamodules import ComposedDigitsDataModule

METRICS = ("top1", "top5", "agreement", "spearman")


class _InputError(ValueError):
    """Recorded runs or arguments that cannot be used as given; ``cmkd-compare`` prints the message as one line."""


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


# The digits CNNs' stages ReviewKD reads (examples/configs/digits/reviewkd.yaml): the student's two stages and pooled
# features against the teacher's last two and pooled.
_DIGITS_STUDENT_STAGES = ("stage1", "stage2", "pooled")
_DIGITS_TEACHER_STAGES = ("stage2", "stage3", "pooled")

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
        lambda: [CMKDLoss.paper(temperature=4.0, beta=4.0, gamma=1.0)],
        [1.0],
        1.0,
        "CE 1 + CMKD as the paper writes it (T = 4, beta = 4, gamma = 1, pearson_scale 1, entropy of the loss's p_t)",
    ),
    "reviewkd": Method(
        "reviewkd",
        lambda: [ReviewKDLoss(_DIGITS_STUDENT_STAGES, _DIGITS_TEACHER_STAGES, warmup_epochs=2)],
        [1.0],
        1.0,
        "CE 1 + ReviewKD (ABF + HCL on two stages and the pooled features, 2-epoch warm-up): a feature method",
    ),
    "reviewkd_cmkd": Method(
        "reviewkd_cmkd",
        lambda: [ReviewKDLoss(_DIGITS_STUDENT_STAGES, _DIGITS_TEACHER_STAGES, warmup_epochs=2), CMKDLoss()],
        [1.0, 1.0],
        1.0,
        "CE 1 + ReviewKD + CMKDLoss() defaults: a feature and a logit loss in one list",
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
            raise _InputError(
                f"Expected each method to be one of {sorted(BUILTIN_METHODS)} or a .yaml config, but got {entry!r}."
            )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise _InputError(f"Expected unique method names, but got {names}.")
    return methods


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` and ``os.replace``: readers see the old file or the new one.

    A process killed mid-write leaves at most a hidden ``.<name>.tmp-<pid>`` file beside it, never a partial
    ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def data_fingerprint(data: ComposedDigitsDataModule) -> str:
    """SHA-256 of the composed images and labels of every split (after ``setup()``) and the loader settings.

    Two comparisons reuse each other's runs only if they trained and tested on the same tensors, whatever
    produced them (the data module's arguments, scikit-learn's copy of the digits, the composition code).
    """
    digest = hashlib.sha256(json.dumps({"batch_size": data.batch_size, "seed": data.seed}).encode())
    for split in sorted(data.datasets):
        dataset = data.datasets[split]
        tensors = getattr(dataset, "tensors", None) or (dataset.images, dataset.labels)
        digest.update(split.encode())
        for tensor in tensors:
            digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps({"augment": bool(getattr(data, "augment", False))}).encode())
    return digest.hexdigest()


def _trainer(epochs: int, out: Path, progress: bool = False, logger: Any = False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
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
    """Train a teacher with cross-entropy (SGD lr 0.05, cosine), or load ``<out>/teacher-<arch>-<k>d-<E>ep.pt``.

    The file is written atomically (a killed run leaves no partial teacher); the students' cache key holds a hash
    of its bytes, so a different teacher at this path retrains them.
    """
    path = out / f"teacher-{arch}-{data.num_digits}d-{data.sizes['train']}-{epochs}ep.pt"
    teacher = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    if path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        return teacher.eval()
    L.seed_everything(seed, verbose=False)
    module = DistillationModule(teacher, num_classes=data.num_classes, lr_scheduler=WarmupCosine)
    _trainer(epochs, out).fit(module, data)
    _atomic_write(path, lambda tmp: torch.save(teacher.state_dict(), tmp))
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
    logger: Any = False,
) -> DistillationModule:
    """Train one student: ``seed`` fixes its initial weights, the data module fixes the batch order.

    ``logger``: the Lightning logger of the run (default: none).
    """
    L.seed_everything(seed, verbose=False)
    student = create_model(arch, num_classes=data.num_classes, num_digits=data.num_digits)
    losses = method.losses()
    for loss in losses:  # feature losses size their connectors from one sample of the task's images
        if isinstance(loss, FeatureDistillationLoss):
            loss.input_shape = list(data.image_shape)
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
    _trainer(epochs, out, logger=logger).fit(module, data)
    return module


def train_student(
    method: Method,
    seed: int,
    data: ComposedDigitsDataModule,
    teacher: nn.Module,
    epochs: int,
    out: Path,
    wandb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`fit_student`, then the test metrics (Top-1, Top-5, agreement and Spearman with the teacher).

    ``wandb``: ``{"project": ..., "group": ..., "config": {...}}`` logs the run as a W&B run of its own
    (``<method>-seed<seed>``, the config given, the test metrics in its summary), finished before this returns.
    """
    logger: Any = False
    if wandb is not None:
        from lightning.pytorch.loggers import WandbLogger

        from cmkd_lightning.cli import ensure_wandb_mode

        ensure_wandb_mode()
        logger = WandbLogger(
            project=wandb["project"],
            group=wandb["group"],
            name=f"{method.name}-seed{seed}",
            save_dir=str(out),
            config={"method": method.name, "seed": seed, **wandb.get("config", {})},
        )
    start = time.perf_counter()
    try:
        module = fit_student(method, seed, data, teacher, epochs, out, logger=logger)
        seconds = time.perf_counter() - start
        row = {"method": method.name, "seed": seed, **_evaluate(module, teacher, data.test_dataloader())}
        row["seconds"] = seconds
    except BaseException:
        if logger:
            logger.experiment.finish(exit_code=1)
        raise
    if logger:
        row["wandb_run_id"] = str(logger.experiment.id)
        logger.experiment.summary.update({f"test/{k}": row[k] for k in METRICS if k in row})
        logger.experiment.finish()
    return row


def method_config(method: Method) -> dict[str, Any]:
    """A method's resolved configuration: CE weight, loss weights, and every loss's class and scalar settings.

    Read from freshly built loss objects, so a changed default (e.g. of :class:`~cmkd_lightning.losses.CMKDLoss`) or
    an edited YAML changes it; the method's name is not part of it.

    Example:
        >>> method_config(Method("x", lambda: [KDLoss(temperature=2.0)], [1.0]))["losses"][0]["settings"]["temperature"]
        2.0
    """
    losses = []
    for loss in method.losses():
        settings = {k: v for k, v in sorted(vars(loss).items()) if isinstance(v, (bool, int, float, str, type(None)))}
        settings.pop("training", None)
        losses.append({"class": f"{type(loss).__module__}.{type(loss).__qualname__}", "settings": settings})
    return {"ce_weight": method.ce_weight, "loss_weights": list(method.loss_weights), "losses": losses}


def method_fingerprint(method: Method) -> str:
    """SHA-256 of :func:`method_config`: what identifies a method's training, whatever it is called."""
    return _sha256_json(method_config(method))


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's weights (every state-dict entry's name, shape, dtype and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def run_keys(method: Method, seed: int, provenance: dict[str, Any]) -> tuple[str, str]:
    """``(run key, config hash)`` of one student run, from what produced it (never a name or a path).

    The config hash covers the method's resolved config (:func:`method_config`), the teacher's weights, the data
    and the training settings in ``provenance``; the run key adds the seed.
    """
    config_hash = _sha256_json({"method": method_fingerprint(method), **provenance})
    return _sha256_json({"config": config_hash, "seed": seed}), config_hash


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The records of ``runs.jsonl`` (oldest first).

    A truncated last line (a process killed while recording, by an older version that appended in place) is
    skipped with a warning naming the file; a damaged line elsewhere raises ``ValueError``. Records written
    before runs were keyed by config hash are skipped with a warning (their teacher is unknown).
    """
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    entries, old = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                warnings.warn(
                    f"Skipped the truncated last line of {path} (line {i + 1}: {err.msg}); that run is not counted "
                    "and is trained again by the next cmkd-compare.",
                    stacklevel=2,
                )
                continue
            raise _InputError(f"Expected line {i + 1} of {path} to be a JSON record, but it is not: {err}.") from None
        if "config_hash" not in entry:
            old += 1
            continue
        entries.append(entry)
    if old:
        warnings.warn(
            f"Skipped {old} run(s) in {path} recorded before runs were keyed by the hash of their config, teacher and "
            "data; they are trained again.",
            stacklevel=2,
        )
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    import fcntl

    with path.with_name(f"{path.name}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _record_run(path: Path, entry: dict[str, Any]) -> None:
    """Add one record to ``runs.jsonl``: under a file lock (several processes may share ``out``), atomically."""
    with _locked(path):
        text = path.read_text() if path.is_file() else ""
        if text and not text.endswith("\n"):  # a truncated last line (already warned about when read): drop it
            text = text[: text.rfind("\n") + 1]
        _atomic_write_text(path, text + json.dumps(entry) + "\n")


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
    """Top-1 and Spearman per method: mean bars with std error bars and one dot per seed.

    One colour per method, the mean written above each bar, the legend (methods, seeds, teacher line) below the
    panels, clear of the data. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(summary["methods"])
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(names))]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 2), 4.6))
    panels = ((axes[0], "top1", "test Top-1 (%)", 2), (axes[1], "spearman", "Spearman(teacher, student)", 3))
    for ax, key, label, digits in panels:
        means = [summary["methods"][n][key]["mean"] for n in names]
        stds = [summary["methods"][n][key]["std"] for n in names]
        x = list(range(len(names)))
        ax.bar(x, means, yerr=stds, capsize=5, color=colours, alpha=0.75, edgecolor="black", linewidth=0.6)
        top = bottom = 0.0
        for i, n in enumerate(names):
            vals = [r[key] for r in rows if r["method"] == n]
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
            high = max([means[i] + stds[i], *vals])
            top, bottom = max(top, high), min([bottom, means[i] - stds[i], *vals])
            ax.annotate(
                f"{means[i]:.{digits}f}",
                (i, high),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if key == "top1" and teacher_top1 is not None:
            ax.axhline(teacher_top1, color="black", ls="--", lw=1)
            top = max(top, teacher_top1)
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - 0.05 * span if bottom < 0 else 0, top + 0.12 * span)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=c, alpha=0.75, edgecolor="black", label=n) for n, c in zip(names, colours)]
    handles.append(Line2D([], [], color="black", marker="o", ls="", markersize=3, label="one seed"))
    if teacher_top1 is not None:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label=f"teacher {teacher_top1:.2f}%"))
    columns = min(len(handles), 8)
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 * math.ceil(len(handles) / columns), 1, 1))
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
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
    """``<stem>.json`` (everything), ``.csv`` (one row per run), ``.md`` (the tables) and ``.png`` (the plot).

    Each file is written atomically (temporary file, then ``os.replace``).
    """
    _atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())
    _atomic_write_text(stem.with_suffix(".md"), tables)
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
    wandb_project: str | None = None,
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
        reuse: reuse runs recorded in ``<out>/runs.jsonl`` with the same key: a hash of the method's resolved
            config, the teacher's weights, the data, the training settings and the seed (so an interrupted
            comparison resumes, and several processes with different ``seeds`` can fill one directory before a
            last call summarises them all); a changed YAML or teacher file retrains.
        verbose: print progress and the tables.
        wandb_project: log every student trained here as a W&B run of its own in this project (grouped by the
            ``out`` folder's name; runs reused from ``runs.jsonl`` are not logged again).

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
        raise _InputError(f"Expected `reference` to be one of the methods {names}, but got {reference!r}.")
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
    training = {"num_digits": num_digits, "train_size": train_size, "eval_size": eval_size, "epochs": epochs}
    training.update(student="digits_student", lr=0.05)
    provenance = {"teacher": teacher_fingerprint(teacher), "data": data_fingerprint(data), "training": training}
    for seed in seeds:
        for method in resolved:
            key, config_hash = run_keys(method, seed, provenance)
            recorded = {e["key"]: e for e in read_runs(cache_path)} if reuse else {}
            cached = key in recorded
            if cached:  # the same config, teacher, data and seed, maybe under another name
                row = {**recorded[key]["row"], "method": method.name}
            else:
                wandb = None
                if wandb_project is not None:
                    wandb = {"project": wandb_project, "group": out.resolve().name}
                    wandb["config"] = {"config_hash": config_hash, "method_config": method_config(method), **provenance}
                row = {**train_student(method, seed, data, teacher, epochs, out, wandb), "config_hash": config_hash}
                entry = {"key": key, "config_hash": config_hash, "method_config": method_config(method), **provenance}
                entry["teacher_eval"] = teacher_eval
                _record_run(cache_path, {**entry, "row": row})
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
    must share the data, epochs and teacher, and each method's runs one config hash, or this raises ``ValueError``
    (never a mean over different configurations under one name).
    """
    out = Path(out)
    path = out / "runs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"Expected recorded runs in {path}, but it does not exist.")
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in read_runs(path):
        row = entry["row"]
        if row["method"] in methods and (seeds is None or row["seed"] in seeds):
            chosen[(row["method"], row["seed"])] = entry
    if not chosen:
        raise _InputError(f"Expected recorded runs of {list(methods)} in {path}, but found none.")
    for name in methods:
        by_hash: dict[str, list[int]] = {}
        for (m, seed), entry in sorted(chosen.items(), key=lambda item: item[0][1]):
            if m == name:
                by_hash.setdefault(entry["config_hash"], []).append(seed)
        if len(by_hash) > 1:
            found = "; ".join(f"config {h[:12]}: seeds {s}" for h, s in by_hash.items())
            raise _InputError(
                f"Expected the recorded runs of `{name}` in {path} to come from one configuration, but they come "
                f"from {len(by_hash)} ({found}): its config, the teacher or the data changed between seeds. Rerun "
                "cmkd-compare with the current config (it retrains the others) or summarise the seeds apart."
            )
    settings = {json.dumps({k: e[k] for k in ("teacher", "data", "training")}, sort_keys=True) for e in chosen.values()}
    if len(settings) != 1:
        raise _InputError(
            f"Expected the recorded runs in {path} to share data, epochs and teacher, but found {len(settings)} "
            f"different ones: {sorted(settings)}."
        )
    setting = json.loads(settings.pop())["training"]
    names = [m for m in methods if any(k[0] == m for k in chosen)]
    reference = names[-1] if reference is None else reference
    rows = [chosen[k]["row"] for k in sorted(chosen, key=lambda k: (k[1], names.index(k[0])))]
    summary = summarize(rows, names, reference)
    n_seeds = len({r["seed"] for r in rows})
    title = (
        f"Composed digits x{setting['num_digits']} ({10 ** setting['num_digits']} classes), {setting['train_size']} "
        f"train images, {setting['epochs']} epochs, {n_seeds} paired seeds"
    )
    teacher = next(iter(chosen.values())).get("teacher_eval")  # the teacher these runs were trained with
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
        "--wandb-project",
        default=None,
        help="log each student trained as its own W&B run in this project, grouped by --out's name (default: no W&B)",
    )
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
    try:
        if a.summarize_only:
            summarize_recorded(a.out, a.methods, a.seeds, a.reference)
            return
        resolve_methods(a.methods)  # a bad name or config file: one line, before the teacher trains
        from cmkd_lightning.utilities.runtime import quiet_lightning

        with quiet_lightning():  # Lightning's known noise, for this run only
            _compare_from_args(a)
    except (_InputError, FileNotFoundError) as err:
        raise SystemExit(f"cmkd-compare: error: {err}") from None


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
        wandb_project=a.wandb_project,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
