"""``cmkd-compare``: train several distillation methods over paired seeds and compare them with paired tests.

The quickstart's table, generalised: any number of methods (built-in names or ``cmkd`` YAML configs), any number
of seeds, 10, 100 or 1000 classes of composed digits. One teacher is trained (or loaded) once; then, for every
seed, every method trains a student from the *same* initial weights on the *same* batches for the same number of
epochs (paired seeds), so the methods differ only in their loss. The command prints mean ± std per method and the
paired differences against a reference method with a paired t-test and a Wilcoxon signed-rank test.

Files under ``--out``: a comparison writes ``results.{json,csv,md,png}`` (everything; one row per run; the
tables; means, std and every seed) and records every run in ``runs.jsonl``; ``--summarize-only`` trains nothing
and writes ``final.{json,csv,md,png}`` from the runs recorded in ``runs.jsonl`` (``results.*`` are left as they
are).

Example (1000 classes, 5 paired seeds)::

    cmkd-compare --num-digits 3 --methods ce kd kd_ce1 dist cmkd --seeds 0 1 2 3 4 --out runs/compare-x3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmkd_lightning.errors import DataNotFoundError
from cmkd_lightning.experiments.methods import (
    BUILTIN_METHODS,
    Method,
    MethodError,
    method_config,
    method_fingerprint,
    method_from_config,
    methods_help,
    resolve_methods,
)
from cmkd_lightning.experiments.outputs import (
    METRICS,
    atomic_write_text,
    format_tables,
    plot,
    summarize,
    write_outputs,
)
from cmkd_lightning.experiments.training import (
    digits_data,
    evaluate,
    fit_student,
    isolated_run,
    train_student,
    train_teacher,
)
from cmkd_lightning.models import create_model
from datamodules import ComposedDigitsDataModule

# The building blocks live in methods / training / outputs; they stay importable from here (benchmarks use them).
__all__ = [
    "BUILTIN_METHODS",
    "METRICS",
    "Method",
    "compare",
    "data_fingerprint",
    "fit_student",
    "format_tables",
    "main",
    "method_config",
    "method_fingerprint",
    "method_from_config",
    "plot",
    "read_runs",
    "resolve_methods",
    "run_keys",
    "summarize",
    "summarize_recorded",
    "teacher_fingerprint",
    "train_student",
    "train_teacher",
]

DEFAULT_METHODS = ("ce", "kd", "kd_ce1", "dist", "cmkd")
DESCRIPTION = """\
Train several distillation methods over paired seeds on composed digits (10, 100 or 1000 classes) and compare
them with paired tests. One teacher is trained (or loaded) once; for every seed, every method trains a student
from the same initial weights on the same batches, so the methods differ only in their loss. Prints mean ± std
per method and the paired differences against --reference (paired t-test, Wilcoxon signed-rank test).

files under --out:
  results.json, results.csv, results.md, results.png   written by a comparison: everything, one row per run,
                                                       the tables, the plot (means, std and every seed)
  runs.jsonl                                           every finished run, reused by later calls
  teacher-*.pt                                         the teacher trained here
  final.json, final.csv, final.md, final.png           written by --summarize-only instead of results.*"""
_InputError = MethodError  # recorded runs or arguments that cannot be used as given: printed as one line


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
        atomic_write_text(path, text + json.dumps(entry) + "\n")


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
    threads: int | None = None,
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
        threads: torch threads while it runs (``None``: ``$CMKD_CPU_THREADS``, else 1; ``0``: torch's default);
            the caller's count, warning filters and random states are restored when it returns or raises.
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
    from cmkd_lightning.utilities.runtime import quiet_lightning

    resolved = resolve_methods(methods)
    names = [m.name for m in resolved]
    reference = names[-1] if reference is None else reference
    if reference not in names:
        raise _InputError(f"Expected `reference` to be one of the methods {names}, but got {reference!r}.")
    out = Path(out)
    with isolated_run(threads) as used_threads, quiet_lightning():
        return _compare(
            resolved,
            seeds,
            reference,
            num_digits=num_digits,
            train_size=train_size,
            eval_size=eval_size,
            epochs=epochs,
            teacher_epochs=teacher_epochs,
            teacher_checkpoint=teacher_checkpoint,
            out=out,
            threads=used_threads,
            reuse=reuse,
            verbose=verbose,
            wandb_project=wandb_project,
        )


def _compare(
    resolved: list[Method],
    seeds: Sequence[int],
    reference: str,
    *,
    num_digits: int,
    train_size: int,
    eval_size: int,
    epochs: int,
    teacher_epochs: int,
    teacher_checkpoint: str | Path | None,
    out: Path,
    threads: int,
    reuse: bool,
    verbose: bool,
    wandb_project: str | None,
) -> dict[str, Any]:
    names = [m.name for m in resolved]
    out.mkdir(parents=True, exist_ok=True)
    data = digits_data(num_digits, train_size, eval_size)
    t0 = time.perf_counter()
    if teacher_checkpoint is not None:
        teacher = create_model("digits_teacher", num_classes=data.num_classes, num_digits=num_digits)
        teacher.load_state_dict(torch.load(teacher_checkpoint, weights_only=True))
        teacher.eval()
    else:
        teacher = train_teacher(data, teacher_epochs, out)
    teacher_eval = evaluate(teacher, teacher, data.test_dataloader())
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
    write_outputs(out / "results", result, rows, summary, tables, title, teacher_eval["top1"])
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
        raise DataNotFoundError(f"Expected recorded runs in {path}, but it does not exist.")
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
    write_outputs(out / "final", result, rows, summary, tables, title, teacher["top1"] if teacher else None)
    if verbose:
        print(tables)
        print(f"Wrote {out}/final.{{json,csv,md,png}}.")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The ``cmkd-compare`` argument parser; ``--help`` lists the built-in methods and every option's default."""
    p = argparse.ArgumentParser(
        prog="cmkd-compare",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="built-in methods (--methods; the loss is CE weight * cross-entropy + the listed terms):\n"
        + methods_help()
        + "\n\nexample:\n  cmkd-compare --num-digits 3 --methods ce kd kd_ce1 dist cmkd --seeds 0 1 2 3 4 "
        "--out runs/compare-x3",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help="built-in names (listed below) or `cmkd` YAML configs; the last is the default --reference "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="paired student seeds (default: 0 1 2 3 4; with --summarize-only: every recorded seed)",
    )
    p.add_argument("--num-digits", type=int, default=3, help="digits per image: 10**k classes (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=30000, help="composed training images (default: %(default)s)")
    p.add_argument(
        "--eval-size", type=int, default=5000, help="composed val and test images, each (default: %(default)s)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="student epochs, SGD lr 0.05 + cosine, the same for every method (default: %(default)s)",
    )
    p.add_argument(
        "--teacher-epochs",
        type=int,
        default=15,
        help="epochs of the digits_teacher trained here, cached under --out (default: %(default)s)",
    )
    p.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="a digits_teacher state_dict to load instead of training one (default: train, or reuse the cached one)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="method the paired differences are taken against (default: the last of --methods)",
    )
    p.add_argument("--out", default="runs/compare", help="output directory (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; 0: torch's default (default: $CMKD_CPU_THREADS, else 1)",
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="retrain runs already recorded in <out>/runs.jsonl (default: off, recorded runs are reused)",
    )
    p.add_argument(
        "--wandb-project",
        default=None,
        help="log each student trained as its own W&B run in this project, grouped by --out's name "
        "(default: no W&B)",
    )
    p.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing: read the runs recorded in <out>/runs.jsonl, print the tables and write "
        "<out>/final.{json,csv,md,png} (results.* untouched) (default: off)",
    )
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("epochs", "teacher_epochs", "train_size", "eval_size", "num_digits"):
        if getattr(args, name) < 1:
            p.error(f"Expected `--{name.replace('_', '-')}` to be >= 1, but got {getattr(args, name)}.")
    if args.threads is not None and args.threads < 0:
        p.error(f"Expected `--threads` to be >= 0 (0: torch's default), but got {args.threads}.")
    return args


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns None, so the process exits 0 after success)."""
    a = _parse(argv)
    try:
        if a.summarize_only:
            summarize_recorded(a.out, a.methods, a.seeds, a.reference)
            return
        resolve_methods(a.methods)  # a bad name or config file: one line, before the teacher trains
        _compare_from_args(a)
    except (_InputError, FileNotFoundError) as err:
        raise SystemExit(f"cmkd-compare: error: {err}") from None


def _compare_from_args(a: argparse.Namespace) -> None:
    compare(
        a.methods,
        a.seeds if a.seeds is not None else (0, 1, 2, 3, 4),
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
