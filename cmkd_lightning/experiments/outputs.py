"""The writers of the experiment tools: paired statistics, Markdown tables, the results plot, atomic files.

``cmkd-quickstart`` and ``cmkd-compare`` summarise their runs with :func:`summarize`, draw them with :func:`plot`
and write ``<stem>.{json,csv,md,png}`` with :func:`write_outputs`; every file is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmkd_lightning.utilities.optional import require

METRICS = ("top1", "top5", "agreement", "spearman")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


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
    panels, clear of the data. Written atomically, through matplotlib's object API (no pyplot): the process's
    matplotlib backend and pyplot's figures are left alone.
    """
    require("matplotlib", extra="quickstart", purpose="the results plot")
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(summary["methods"])
    colours = [colormaps["tab10"](i % 10) for i in range(len(names))]
    fig = Figure(figsize=(max(8.0, 1.6 * len(names) + 2), 4.6))
    axes = fig.subplots(1, 2)
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def write_outputs(
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
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())
    atomic_write_text(stem.with_suffix(".md"), tables)
    plot(rows, summary, stem.with_suffix(".png"), title, teacher_top1)


