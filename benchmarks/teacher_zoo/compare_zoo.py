"""``cmkd-compare`` over a teacher zoo: methods × teachers × paired seeds, per-teacher and pooled paired tables.

For every zoo teacher (``zoo.py``, trained and cached under ``--zoo``) and every seed, every method trains a
student from the same initial weights on the same batches
(``cmkd_lightning.experiments.training.train_student``, the trainer of ``cmkd-compare`` and ``cmkd-quickstart``:
SGD lr 0.05, cosine, batch 128, the cross-entropy weight of each method in the shared methods table), so within
a teacher the methods differ only in their loss. The tables:

- per teacher: mean ± std per method and the paired differences against ``--reference`` (paired t-test and
  Wilcoxon signed-rank test over the seeds), as ``cmkd-compare`` prints them;
- pooled over the teachers of one class count: the same with (teacher, seed) as the pairing unit;
- the margin table: per teacher, each method's mean Top-1 and ``--reference`` minus the best of ``--baselines``.

Runs are recorded in ``<out>/runs.jsonl`` keyed by teacher, method fingerprint, seed, data and epochs, so an
interrupted comparison resumes and several calls fill one folder; ``--summarize-only`` only writes the tables.

    python benchmarks/teacher_zoo/compare_zoo.py --zoo runs/zoo --teachers d3_grid d3_sharp \
        --methods kd kd_ce1 dist cmkd_paper cmkd --seeds 0 1 2 --out runs/zoo-cmp-d3

A smaller ``--train-size`` is cheaper but not always informative: at 1000 classes, 10,000 images and 4 epochs
the cross-entropy student stays at chance (0.42 % Top-1, one seed, ``docs/TEACHER_ZOO.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo as zoo_lib  # noqa: E402

from cmkd_lightning.experiments.methods import BUILTIN_METHODS, Method, method_fingerprint, resolve_methods  # noqa: E402
from cmkd_lightning.experiments.outputs import format_tables, summarize  # noqa: E402
from cmkd_lightning.experiments.training import train_student  # noqa: E402
from cmkd_lightning.losses import CMKDLoss, DISTLoss  # noqa: E402

# CMKD variants searched on the zoo (all keep the entropy-weighted Pearson + Spearman of teacher and student).
ZOO_METHODS: dict[str, Method] = {
    "cmkd_t1": Method("cmkd_t1", lambda: [CMKDLoss(temperature=1.0)], [1.0], 1.0, "CE 1 + CMKDLoss(T = 1)"),
    "cmkd_t05": Method("cmkd_t05", lambda: [CMKDLoss(temperature=0.5)], [1.0], 1.0, "CE 1 + CMKDLoss(T = 0.5)"),
    "cmkd_t1_loss_entropy": Method(
        "cmkd_t1_loss_entropy",
        lambda: [CMKDLoss(temperature=1.0, entropy_source="loss")],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(T = 1, entropy of the loss's target)",
    ),
    "cmkd_logits": Method(
        "cmkd_logits",
        lambda: [CMKDLoss(temperature_units="logits")],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(T = 4 on the teacher's logit scale: target softmax(z_t / 4))",
    ),
    "cmkd_logits_t2": Method(
        "cmkd_logits_t2",
        lambda: [CMKDLoss(temperature=2.0, temperature_units="logits")],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(T = 2 on the teacher's logit scale)",
    ),
    "cmkd_ppl32": Method(
        "cmkd_ppl32",
        lambda: [CMKDLoss(target_perplexity=32.0)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(per-row temperature: the teacher's target at perplexity 32)",
    ),
    "cmkd_ppl10": Method(
        "cmkd_ppl10",
        lambda: [CMKDLoss(target_perplexity=10.0)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(per-row temperature: the teacher's target at perplexity 10)",
    ),
    "cmkd_w05": Method(
        "cmkd_w05", lambda: [CMKDLoss()], [0.5], 1.0, "CE 1 + 0.5 * CMKDLoss(): half the distillation weight"
    ),
    "cmkd_w025": Method(
        "cmkd_w025", lambda: [CMKDLoss()], [0.25], 1.0, "CE 1 + 0.25 * CMKDLoss(): a quarter of the distillation weight"
    ),
    "cmkd_rank_heavy": Method(
        "cmkd_rank_heavy",
        lambda: [CMKDLoss(dynamic_weighting=False, beta=1.0, gamma=4.0)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(dynamic_weighting=False, beta=1, gamma=4): Spearman-heavy for every sample",
    ),
    "cmkd_light": Method(
        "cmkd_light",
        lambda: [CMKDLoss(pearson_scale=math.sqrt(1000) / 4)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(pearson_scale=sqrt(1000)/4): Eq. 16's entropy swap with a quarter of the Pearson weight",
    ),
    "cmkd_static": Method(
        "cmkd_static",
        lambda: [CMKDLoss(dynamic_weighting=False)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(dynamic_weighting=False): beta on Pearson, gamma on Spearman for every sample",
    ),
    "dist_inter": Method(
        "dist_inter",
        lambda: [DISTLoss(temperature=4.0, beta=1.0, gamma=0.0)],
        [2.0],
        1.0,
        "CE 1 + 2 * DIST's inter-class term only (tau = 4, beta = 1, gamma = 0): a diagnostic",
    ),
    "dist_intra": Method(
        "dist_intra",
        lambda: [DISTLoss(temperature=4.0, beta=0.0, gamma=1.0)],
        [2.0],
        1.0,
        "CE 1 + 2 * DIST's intra-class term only (tau = 4, beta = 0, gamma = 1): a diagnostic",
    ),
    "cmkd_paper_preset": Method(
        "cmkd_paper_preset", lambda: [CMKDLoss.paper(temperature=4.0)], [1.0], 1.0, "CE 1 + CMKDLoss.paper(T = 4)"
    ),
}


def methods_from(entries: Sequence[str]) -> list[Method]:
    """Names from the shared built-ins (``experiments.methods``) or :data:`ZOO_METHODS`, or ``cmkd`` YAML configs."""
    return resolve_methods([ZOO_METHODS.get(e, e) for e in entries])  # type: ignore[list-item]


def _key(teacher: str, fingerprint: str, method: Method, seed: int, setting: dict[str, Any]) -> str:
    fields = {"teacher": teacher, "teacher_fp": fingerprint, "method": method.name, "seed": seed}
    return json.dumps({**fields, "fp": method_fingerprint(method), **setting}, sort_keys=True)


def _recorded(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                rows[entry["key"]] = entry["row"]
    return rows


def run(
    teachers: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    zoo: str | Path,
    out: str | Path,
    train_size: int = 30000,
    epochs: int = 4,
    train: bool = True,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Train (or read back) every (teacher, seed, method) student; returns one row per run.

    Teachers must be cached under ``zoo`` (``zoo.py build``); a missing one raises ``FileNotFoundError``.
    With ``train=False`` only recorded runs are returned.
    """
    resolved = methods_from(methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "runs.jsonl"
    setting = {"train_size": train_size, "epochs": epochs, "eval_size": zoo_lib.EVAL_SIZE}
    rows = []
    data: dict[int, Any] = {}
    for name in teachers:
        if name not in zoo_lib.ZOO:
            raise ValueError(f"Expected `teachers` from {sorted(zoo_lib.ZOO)}, but got {name!r}.")
        spec = zoo_lib.ZOO[name]
        teacher = zoo_lib.load(spec, zoo)
        if teacher is None and train:
            raise FileNotFoundError(
                f"Expected the zoo teacher {name!r} cached under {zoo}; run `zoo.py build --names {name}` first."
            )
        for seed in seeds:
            for method in resolved:
                key = _key(name, spec.fingerprint(), method, seed, setting)
                row = _recorded(cache).get(key)
                if row is None and train:
                    if spec.num_digits not in data:
                        data[spec.num_digits] = zoo_lib.data_module(spec.num_digits, train_size)
                    row = train_student(method, seed, data[spec.num_digits], teacher, epochs, out / "lightning")
                    row["teacher"] = name
                    with cache.open("a") as f:
                        f.write(json.dumps({"key": key, "row": row}) + "\n")
                    if verbose:
                        print(
                            f"{name} seed {seed} {method.name:>20}: Top-1 {row['top1']:6.2f}%  "
                            f"Spearman {row['spearman']:.3f}  ({row['seconds']:.0f} s)",
                            flush=True,
                        )
                if row is not None:
                    rows.append({**row, "teacher": name})
    return rows


def margin_table(rows: list[dict[str, Any]], methods: Sequence[str], reference: str, baselines: Sequence[str]) -> str:
    """Per teacher: mean Top-1 of each method (``-`` where it did not run), and ``reference`` minus the best
    baseline mean; the last row averages the per-teacher means over the teachers each method ran on."""
    teachers = list(dict.fromkeys(r["teacher"] for r in rows))
    lines = ["| teacher | " + " | ".join(methods) + f" | {reference} − best of {'/'.join(baselines)} |"]
    lines.append("|---" * (len(methods) + 2) + "|")
    per_teacher: dict[str, dict[str, float]] = {}
    margins = []
    for t in teachers:
        means = {}
        for m in methods:
            vals = [r["top1"] for r in rows if r["teacher"] == t and r["method"] == m]
            if vals:
                means[m] = statistics.fmean(vals)
        per_teacher[t] = means
        best = [means[b] for b in baselines if b in means]
        margin = means[reference] - max(best) if best and reference in means else None
        if margin is not None:
            margins.append(margin)
        cells = " | ".join(f"{means[m]:.2f}" if m in means else "-" for m in methods)
        lines.append(f"| {t} | {cells} | {'-' if margin is None else f'{margin:+.2f}'} |")
    cells = []
    for m in methods:
        vals = [per_teacher[t][m] for t in teachers if m in per_teacher[t]]
        cells.append(f"{statistics.fmean(vals):.2f} ({len(vals)})" if vals else "-")
    mean_margin = f"{statistics.fmean(margins):+.2f} ({len(margins)})" if margins else "-"
    lines.append(f"| **mean over teachers (how many)** | {' | '.join(cells)} | {mean_margin} |")
    return "\n".join(lines) + "\n"


def tables(
    rows: list[dict[str, Any]], methods: Sequence[str], reference: str, baselines: Sequence[str], title: str
) -> tuple[str, dict[str, Any]]:
    """Markdown: one block per teacher, the pooled block, the margin table; and the summaries as data."""
    present = [m for m in methods if any(r["method"] == m for r in rows)]
    teachers = list(dict.fromkeys(r["teacher"] for r in rows))
    parts, summaries = [], {}
    for t in teachers:
        mine = [r for r in rows if r["teacher"] == t]
        s = summarize(mine, [m for m in present if any(r["method"] == m for r in mine)], reference)
        summaries[t] = s
        n = len({r["seed"] for r in mine})
        parts.append(format_tables(s, None, f"{title}: teacher {t}, {n} paired seeds"))
    pooled_rows = [{**r, "seed": f"{r['teacher']}/{r['seed']}"} for r in rows]
    pooled = summarize(pooled_rows, present, reference)
    summaries["pooled"] = pooled
    parts.append(format_tables(pooled, None, f"{title}: pooled over {len(teachers)} teachers, pairs = (teacher, seed)"))
    parts.append(f"### {title}: mean Top-1 per teacher\n\n" + margin_table(rows, present, reference, baselines))
    return "\n".join(parts), summaries


def main(argv: list[str] | None = None) -> None:
    """Train the missing runs, then print and write the tables (``<out>/zoo_tables.md``, ``zoo_results.json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="folder of the cached zoo teachers (zoo.py build --out)")
    p.add_argument("--teachers", nargs="+", required=True, help=f"from: {', '.join(zoo_lib.ZOO)}")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["kd", "kd_ce1", "dist", "cmkd_paper", "cmkd"],
        help=f"cmkd-compare's {sorted(BUILTIN_METHODS)}, this script's {sorted(ZOO_METHODS)}, or configs",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--reference", default=None, help="method the differences are taken against (default: last)")
    p.add_argument("--baselines", nargs="+", default=["kd", "kd_ce1", "dist"], help="for the margin column")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarize-only", action="store_true", help="train nothing; tables from recorded runs")
    a = p.parse_args(argv)
    for name in ("train_size", "epochs", "threads"):
        if getattr(a, name) < 1:
            p.error(f"Expected `--{name.replace('_', '-')}` to be >= 1, but got {getattr(a, name)}.")
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    reference = a.reference or a.methods[-1]
    if reference not in a.methods:
        p.error(f"Expected `--reference` to be one of the methods {a.methods}, but got {reference!r}.")
    start = time.perf_counter()
    from cmkd_lightning.utilities.runtime import quiet_lightning

    with quiet_lightning():
        rows = run(
            a.teachers,
            a.methods,
            a.seeds,
            zoo=a.zoo,
            out=a.out,
            train_size=a.train_size,
            epochs=a.epochs,
            train=not a.summarize_only,
        )
    if not rows:
        raise SystemExit(f"No runs recorded in {a.out}/runs.jsonl for these teachers, methods and seeds.")
    title = f"{a.train_size} train images, {a.epochs} epochs"
    text, summaries = tables(rows, a.methods, reference, a.baselines, title)
    out = Path(a.out)
    (out / "zoo_tables.md").write_text(text)
    config = {k: v for k, v in vars(a).items()}
    result = {"config": config, "runs": rows, "summaries": summaries, "seconds": time.perf_counter() - start}
    (out / "zoo_results.json").write_text(json.dumps(result, indent=2, default=str))
    print(text)
    print(f"Wrote {out}/zoo_tables.md and zoo_results.json.")


if __name__ == "__main__":
    main()
