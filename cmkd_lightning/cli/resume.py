"""What a ``cmkd fit`` resumes: checkpoints read safely, run identity checked, the logger run continued.

A run's checkpoints go (by default) to ``<save_dir>/<name>/<version>/checkpoints`` (Lightning's layout);
``<version>`` is ``version_<k>`` for the CSV and TensorBoard loggers and the run id for W&B. Everything here goes
through public API: checkpoints are read with ``torch.load(weights_only=True)``, loggers are configured through
their constructor arguments (``id``/``resume`` for W&B, ``version`` for CSV and TensorBoard).
"""

from __future__ import annotations

import glob
import json
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from cmkd_lightning.checkpoint import kind_of_file
from cmkd_lightning.errors import CheckpointNotFoundError, CheckpointReadError, CMKDError, RunMismatchError

__all__ = [
    "CheckpointReadError",
    "LastCheckpointSearch",
    "ResumeError",
    "RunMismatchError",
    "check_same_run",
    "find_last_checkpoint",
    "model_differences",
    "next_free_version",
    "read_checkpoint",
]

_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")
GUARD_KEY = "CheckpointGuard"


class ResumeError(CMKDError, FileNotFoundError):
    """``--ckpt_path last`` was given but there is no checkpoint of this run to resume from."""


# module hyperparameters that tune a run rather than define the model and method: a resume may change them
TUNING = frozenset(
    {
        "optimizer",
        "lr_scheduler",
        "check_finite",
        "channels_last",
        "compile",
        "teacher_cache",
        "teacher_chance_factor",
        "save_teacher_in_checkpoint",
        "_instantiator",
    }
)


def read_checkpoint(path: str | Path, argument: str = "--ckpt_path") -> dict[str, Any]:
    """Load a checkpoint's contents safely (``weights_only``, tensors memory-mapped) or say what is wrong with it.

    Args:
        path: the checkpoint file.
        argument: the option that named it, for the message.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointReadError: the file is missing, a folder, empty, truncated or damaged, not a torch checkpoint,
            or a pickle that ``weights_only`` refuses (it could run code).

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "empty.ckpt"
        >>> _ = file.write_bytes(b"")
        >>> read_checkpoint(file)
        Traceback (most recent call last):
        ...
        cmkd_lightning.errors.CheckpointReadError: Expected `--ckpt_path` to be a checkpoint file, but ... is empty...
    """
    file = Path(path).expanduser()
    where = f"{file} (absolute: {file.resolve()})" if not file.is_absolute() else str(file)
    fix = "Pass another checkpoint (e.g. an older last-v<k>.ckpt) or start without --ckpt_path."
    if not file.exists():
        raise CheckpointNotFoundError(f"Expected `{argument}` to be a checkpoint file, but {where} does not exist.")
    if file.is_dir():
        raise CheckpointReadError(f"Expected `{argument}` to be a checkpoint file, but {where} is a folder.")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointReadError(
            f"Expected `{argument}` to be a checkpoint file, but {where} is empty (0 bytes): it was probably cut off "
            f"while being written. {fix}"
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split("\n")[0].split())[:200]
        if "Weights only load failed" in str(err) or "Unsupported" in str(err):
            raise CheckpointReadError(
                f"Refusing to load `{argument}` {where}: it holds Python objects that loading would have to execute "
                f"(only tensors and plain values are loaded, torch.load(weights_only=True)): {detail}. Use a "
                "checkpoint written by Lightning or cmkd, or re-save the file's state_dict with torch.save."
            ) from err
        raise CheckpointReadError(
            f"Expected `{argument}` {where} to be a torch checkpoint, but it is not ({detail})."
        ) from err
    except (EOFError, RuntimeError, OSError, ValueError) as err:
        kind = kind_of_file(file)
        if kind == "plain pickle":
            raise CheckpointReadError(
                f"Expected `{argument}` {where} to be a torch.save checkpoint, but it is a plain pickle file (written "
                "by pickle.dump). Load it in Python and save it again with torch.save(obj, path)."
            ) from err
        if kind == "truncated":
            state = f"it is truncated ({size} bytes of a zip archive whose end is missing)"
        else:
            detail = " ".join(str(err).split())[:160] or type(err).__name__
            state = f"it is truncated or damaged ({type(err).__name__}: {detail})"
        error = CheckpointReadError(
            f"Expected `{argument}` to be a whole checkpoint, but {where} cannot be read: {state}. {fix}"
        )
        error.reason = state  # what --ckpt_path last reports for a candidate it passes over
        raise error from err
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        kind = "a mapping without a 'state_dict'" if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointReadError(
            f"Expected `{argument}` {where} to be a Lightning checkpoint (a dict with 'state_dict', "
            f"'hyper_parameters', ...), but it holds {kind}. To start a new run from plain weights use "
            "--model.init_args.student_checkpoint instead."
        )
    return dict(checkpoint)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _differs(stored: Any, current: Any) -> bool:
    """Whether two hyperparameter values differ, ignoring mapping keys that only one side has.

    A key only one side has is an argument added (with its default) or removed by another library version: a
    checkpoint written before a new argument existed still resumes.
    """
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        return any(_differs(stored[k], current[k]) for k in stored.keys() & current.keys())
    if isinstance(stored, (list, tuple)) and isinstance(current, (list, tuple)):
        return len(stored) != len(current) or any(_differs(a, b) for a, b in zip(stored, current))
    return _canonical(stored) != _canonical(current)


def model_differences(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The hyperparameters that define the model and method (all but :data:`TUNING`) in which two runs differ.

    Keys inside nested settings (a loss's ``init_args``) that only one side has are not differences.

    Example:
        >>> model_differences({"losses": ["kd"], "optimizer": "sgd"}, {"losses": ["cmkd"], "optimizer": "adam"})
        ['losses']
        >>> model_differences({"loss": {"T": 4}}, {"loss": {"T": 4, "added_later": 1}})
        []
    """
    if stored is None:
        return ["hyper_parameters (none in the checkpoint)"]
    keys = (set(stored) | set(current)) - TUNING
    return sorted(k for k in keys if _differs(stored.get(k), current.get(k)))


def module_name(module: LightningModule | type) -> str:
    """``package.Class`` of a LightningModule (or class), as the checkpoint records it."""
    cls = module if isinstance(module, type) else type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def run_differences(checkpoint: Mapping[str, Any], model: LightningModule) -> list[str]:
    """What makes ``checkpoint`` another model or method than ``model``: its module class and hyperparameters.

    Each entry reads ``name (checkpoint: value; this run: value)``, values shortened.
    """
    differences = []
    guard = (checkpoint.get("callbacks") or {}).get(GUARD_KEY) or {}
    stored_module = guard.get("module") if isinstance(guard, Mapping) else None
    if stored_module and stored_module != module_name(model):
        differences.append(f"module (checkpoint: {stored_module}; this run: {module_name(model)})")
    hparams = checkpoint.get("hyper_parameters")
    stored = dict(hparams) if isinstance(hparams, Mapping) else None
    current = dict(model.hparams)
    keys = model_differences(stored, current)
    if differences:  # another module class: its class path says nothing more
        keys = [k for k in keys if k != "_class_path"]
    first = ("losses", "student", "teacher", "model", "num_classes")
    keys.sort(key=lambda k: (first.index(k) if k in first else len(first), k))
    for key in keys:
        if stored is None:
            differences.append(key)
            continue
        differences.append(f"{key} (checkpoint: {_short(stored.get(key))}; this run: {_short(current.get(key))})")
    return differences


def listed(differences: list[str], limit: int = 3) -> str:
    """The first ``limit`` differences joined, and how many more there are.

    Example:
        >>> listed(["a", "b", "c", "d", "e"])
        'a; b; c; and 2 more'
    """
    shown = "; ".join(differences[:limit])
    return shown + (f"; and {len(differences) - limit} more" if len(differences) > limit else "")


def _short(value: Any, limit: int = 70) -> str:
    """A one-line rendering of a hyperparameter: class names for class_path configs, cut at ``limit``."""

    def names(v: Any) -> Any:
        if isinstance(v, Mapping) and "class_path" in v:
            args = v.get("init_args") or {}
            inner = ", ".join(f"{k}={names(a)}" for k, a in args.items()) if isinstance(args, Mapping) else ""
            return f"{str(v['class_path']).rsplit('.', 1)[-1]}({inner})"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(str(names(x)) for x in v) + "]"
        return v

    text = str(names(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_same_run(path: str | Path, model: LightningModule, checkpoint: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`RunMismatchError` unless ``path`` is a checkpoint of the same model and method as ``model``.

    The optimiser, the schedule and runtime knobs (:data:`TUNING`) may differ; the module class, the networks,
    the losses and their settings, the class count, ... may not.
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    differences = run_differences(checkpoint, model)
    if differences:
        raise RunMismatchError(
            f"Expected `--ckpt_path` {path} to continue this run's model and method, but the checkpoint differs in "
            f"{listed(differences)}. To resume that run, use its own config; to start a new {type(model).__name__} "
            f"run from its student weights, pass --model.init_args.student_checkpoint={path} instead of --ckpt_path."
        )


@dataclass
class LastCheckpointSearch:
    """The outcome of :func:`find_last_checkpoint`: the checkpoint to resume and what was passed over, and why."""

    found: Path | None = None
    searched: list[Path] = field(default_factory=list)
    other_runs: list[tuple[Path, list[str]]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    run_name: str | None = None
    other_names: int = 0

    def error(self) -> ResumeError:
        """The error to raise when nothing was found, saying what was passed over and why."""
        where = ", ".join(str(s) for s in self.searched) or "any checkpoint folder (checkpointing is off)"
        fix = "Start the run without --ckpt_path, or pass the path of a checkpoint file."
        if self.unreadable and not self.other_runs:
            path, reason = self.unreadable[0]
            return ResumeError(
                f"Expected a checkpoint to resume (`--ckpt_path last`), but the newest in {where}, {path}, cannot "
                f"be read: {reason}. {fix}"
            )
        if self.other_runs:
            path, differences = self.other_runs[0]
            return ResumeError(
                f"Expected a checkpoint of this model and method to resume (`--ckpt_path last`), but the last*.ckpt "
                f"in {where} belong to other runs (the newest, {path}, differs in {listed(differences)}). {fix}"
            )
        of = f" of a W&B run named {self.run_name!r}" if self.run_name is not None else ""
        others = f" ({self.other_names} belong to runs of other names)" if self.other_names else ""
        return ResumeError(
            f"Expected a checkpoint to resume (`--ckpt_path last`), but found no last*.ckpt{of} in {where}{others}. "
            f"{fix}"
        )


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def find_last_checkpoint(
    folders: list[Path], model: LightningModule, run_name: str | None = None
) -> LastCheckpointSearch:
    """The newest readable ``last*.ckpt`` under ``folders`` (glob patterns allowed) of the same model and method.

    Args:
        folders: checkpoint folders, as ``glob`` patterns (escape literal parts with ``glob.escape``), e.g.
            ``runs/cmkd-digits/*/checkpoints`` for every run of a logger.
        model: the run's module; only checkpoints without :func:`run_differences` count.
        run_name: for W&B, only checkpoints recorded under this run name count (None: any).
    """
    search = LastCheckpointSearch(searched=list(folders), run_name=run_name)
    candidates: list[Path] = []
    for folder in folders:
        found = (Path(p) for p in glob.glob(str(folder / "last*.ckpt")))
        candidates += [p for p in found if _LAST.match(p.name) and p.is_file()]
    for path in _newest_first(candidates):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointReadError as err:
            search.unreadable.append((path, getattr(err, "reason", str(err))))
            continue
        guard = (checkpoint.get("callbacks") or {}).get(GUARD_KEY) or {}
        if run_name is not None and isinstance(guard, Mapping) and guard.get("run_name") not in (None, run_name):
            search.other_names += 1
            continue
        differences = run_differences(checkpoint, model)
        if differences:
            search.other_runs.append((path, differences))
            continue
        search.found = path
        break
    return search


def logger_folder(logger: Logger, default_root_dir: str | Path) -> Path:
    """``<save_dir>/<name>``: the folder holding one sub-folder per run (version) of ``logger``."""
    return Path(logger.save_dir or default_root_dir) / str(logger.name)


def run_version_of(checkpoint: Path, logger: Logger, default_root_dir: str | Path) -> str | None:
    """The logger version (W&B id, ``version_<k>``) whose run folder holds ``checkpoint``, or None."""
    checkpoint = checkpoint.resolve()
    root = logger_folder(logger, default_root_dir).resolve()
    if checkpoint.parent.name != "checkpoints" or checkpoint.parent.parent.parent != root:
        return None
    return checkpoint.parent.parent.name


def next_free_version(folder: Path) -> int:
    """Claim ``folder/version_<k>`` for the smallest free ``k`` by creating it (``mkdir`` is atomic); return ``k``.

    Two runs started together would otherwise both pick ``version_0`` (each logger looks for free folders on its
    own, and creates it only when it first writes).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> next_free_version(folder), next_free_version(folder)
        (0, 1)
    """
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (folder / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def versioned_arguments(logger: Logger, version: str) -> dict[str, Any]:
    """The constructor arguments that make a new ``logger`` of the same kind write into run ``version``."""
    if isinstance(logger, WandbLogger):
        return {"id": version, "version": None, "resume": "allow"}
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        match = re.fullmatch(r"version_(\d+)", version)
        return {"version": int(match.group(1)) if match else version}
    return {}
