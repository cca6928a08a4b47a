"""Checks ``cmkd`` makes before anything is built or trained, so a bad input fails in seconds with the fix.

- config files that are not UTF-8 or not YAML: the file, line and column;
- an accelerator this machine does not have;
- a teacher checkpoint that does not exist yet: its absolute path and, when a config next to the run's publishes
  it (``PublishCheckpoint(link=...)``), the command that trains it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from cmkd_lightning.errors import CheckpointNotFoundError, ConfigFileError, TrainingDeviceError

__all__ = ["check_accelerator", "check_config_files", "check_teacher_checkpoint", "config_files_in"]

_CONFIG_FLAGS = ("-c", "--config")


def config_files_in(argv: list[str]) -> list[Path]:
    """The files given with ``-c``/``--config`` (also ``--config=path``) in a ``cmkd`` command line.

    Example:
        >>> config_files_in(["fit", "-c", "a.yaml", "--config=b.yaml", "--trainer.max_epochs=1"])
        [PosixPath('a.yaml'), PosixPath('b.yaml')]
    """
    files = []
    for i, arg in enumerate(argv):
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            files.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def check_config_files(files: Iterable[Path]) -> None:
    """Raise :class:`ConfigFileError` naming the file, line and column of the first config that is not UTF-8 YAML.

    Files that do not exist are left to the argument parser (it names them).
    """
    for file in files:
        if not file.is_file():
            continue
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
            raise ConfigFileError(
                f"Expected the config file {file} to be UTF-8 text, but byte 0x{data[err.start]:02x} at line {line}, "
                f"column {column} is not UTF-8 (probably saved as Latin-1 or Windows-1252). Re-save it as UTF-8."
            ) from None
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigFileError(
                f"Expected the config file {file} to be YAML, but it does not parse{where}: {problem}. Fix that line."
            ) from None


def check_accelerator(accelerator: Any, argument: str = "--trainer.accelerator") -> None:
    """Raise :class:`TrainingDeviceError` when ``accelerator`` names a device kind torch cannot find here.

    Example:
        >>> check_accelerator("cpu")
    """
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") and not (
        torch.cuda.is_available() or (name == "gpu" and torch.backends.mps.is_available())
    ):
        raise TrainingDeviceError(
            f"Expected a GPU for `{argument}={accelerator}`, but torch finds no CUDA device on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use {argument}=cpu or "
            f"{argument}=auto; nothing was built or trained."
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingDeviceError(
            f"Expected an Apple MPS device for `{argument}=mps`, but torch finds none on this machine. Use "
            f"{argument}=cpu or {argument}=auto; nothing was built or trained."
        )


def _publishers(folder: Path) -> dict[Path, Path]:
    """``{checkpoint (absolute): config}`` for the ``PublishCheckpoint`` links of the configs in ``folder``."""
    found: dict[Path, Path] = {}
    for config in sorted(folder.glob("*.yaml")):
        try:
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        callbacks = ((document or {}).get("trainer") or {}).get("callbacks") if isinstance(document, Mapping) else None
        for callback in callbacks or []:
            if isinstance(callback, Mapping) and str(callback.get("class_path", "")).endswith("PublishCheckpoint"):
                link = (callback.get("init_args") or {}).get("link")
                if link:
                    found[Path(link).expanduser().absolute()] = config
    return found


def check_teacher_checkpoint(path: Any, config_files: Iterable[Path]) -> None:
    """Raise :class:`CheckpointReadError` if the teacher checkpoint ``path`` (a local file) does not exist.

    The message gives the absolute path (a relative one is read from the working directory) and, when a config in
    the folder of one of ``config_files`` publishes that path, the command that trains the teacher.
    """
    if not isinstance(path, (str, os.PathLike)) or "://" in str(path):
        return
    file = Path(path).expanduser()
    if file.exists():
        return
    absolute = file.absolute()
    relative = "" if file.is_absolute() else f" (relative paths are read from the working directory {Path.cwd()})"
    hint = "Train the teacher first, or point --model.init_args.teacher_checkpoint at its checkpoint."
    for folder in dict.fromkeys(Path(c).absolute().parent for c in config_files):
        publisher = _publishers(folder).get(absolute)
        if publisher is not None:
            shown = (
                os.path.relpath(publisher) if not Path(os.path.relpath(publisher)).parts[:1] == ("..",) else publisher
            )
            hint = f"Train the teacher first, from this folder: cmkd fit -c {shown}"
            break
    raise CheckpointNotFoundError(
        f"Expected the teacher checkpoint `model.init_args.teacher_checkpoint` at {absolute}{relative}, but there "
        f"is no such file. {hint}"
    )
