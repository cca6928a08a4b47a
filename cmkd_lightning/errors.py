"""The library's error types: one base class, :class:`CMKDError`, so callers and the ``cmkd`` command recognise them.

Each error the library raises for a bad input or a failed run is a :class:`CMKDError` (and, where it fits, also the
built-in type a caller would expect, e.g. ``FileNotFoundError`` or ``OSError``). Its message names the argument or
file, what was expected, what was received and the fix; ``cmkd`` prints it in at most three lines and keeps the
traceback for ``--verbose``.
"""

from __future__ import annotations

import pickle

__all__ = [
    "ArgumentTypeError",
    "CMKDError",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "ConfigFileError",
    "ConfigFileNotFoundError",
    "DataError",
    "DataNotFoundError",
    "DownloadError",
    "IndexOutOfRangeError",
    "InvalidArgumentError",
    "LabelRangeError",
    "NonFiniteError",
    "OutputExistsError",
    "OutputWriteError",
    "RunMismatchError",
    "TeacherCacheError",
    "TeacherCacheWriteError",
    "TrainingDeviceError",
    "UnknownKeyError",
    "UnsafeCheckpointError",
    "UsageError",
    "WandbSetupError",
]


class CMKDError(Exception):
    """Base class of every error the library raises on purpose, with a message meant for a person.

    Example:
        >>> issubclass(RunMismatchError, CMKDError)
        True
    """


class InvalidArgumentError(CMKDError, ValueError):
    """An argument has a value outside what it accepts (a negative temperature, an unknown option, ...)."""


class ArgumentTypeError(CMKDError, TypeError):
    """An argument has the wrong type."""


class CheckpointReadError(CMKDError, OSError, ValueError):
    """A checkpoint file is missing, empty, truncated, not a checkpoint, or would need unsafe unpickling."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """A checkpoint file that does not exist (yet): e.g. a student's teacher that has not been trained."""


class UnsafeCheckpointError(CheckpointReadError, pickle.UnpicklingError):
    """A checkpoint that refers to Python objects which loading would execute (``weights_only`` refuses it)."""


class RunMismatchError(CMKDError, ValueError):
    """A checkpoint to resume belongs to another model or method than the run that was asked for."""


class ConfigFileError(CMKDError, ValueError):
    """A config file cannot be read (not UTF-8, not YAML)."""


class ConfigFileNotFoundError(ConfigFileError, FileNotFoundError):
    """A config, space or method file that does not exist."""


class DataError(CMKDError, ValueError):
    """The data cannot be trained on: an empty split, labels outside ``[0, num_classes)``, non-finite inputs."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set's files are not where the data module looks for them."""


class DownloadError(CMKDError, ConnectionError):
    """A data set could not be downloaded; the message says how to place its files by hand."""


class IndexOutOfRangeError(CMKDError, IndexError):
    """An index outside a data set or a list (``dataset[i]`` with ``i >= len(dataset)``)."""


class UnknownKeyError(CMKDError, KeyError):
    """A key (a config path, a name) that the mapping it indexes does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; a person reads it plain
        return str(self.args[0]) if self.args else ""


class UsageError(CMKDError, RuntimeError):
    """A method called out of order: a dataloader before ``setup()``, a feature loss before ``build(...)``."""


class LabelRangeError(DataError, IndexError):
    """A label lies outside ``[0, num_classes)``."""


class NonFiniteError(CMKDError, FloatingPointError):
    """A loss term, the logits or the inputs of a step are NaN or infinite (the ``check_finite`` guard)."""


class OutputExistsError(CMKDError, FileExistsError):
    """A file the run would replace is not one of its own (e.g. a regular file where a link is published)."""


class OutputWriteError(CMKDError, OSError):
    """An output file (a figure, a table) could not be written: a full disk, a read-only folder."""


class TrainingDeviceError(CMKDError, RuntimeError):
    """The accelerator asked for does not exist on this machine."""


class WandbSetupError(CMKDError, RuntimeError):
    """W&B was asked to log online but has no credentials or cannot reach its server."""


class TeacherCacheError(CMKDError, ValueError):
    """A teacher-logit cache that cannot be used: bound to other weights or data, unfinished, damaged, or busy."""


class TeacherCacheWriteError(CMKDError, OSError):
    """A teacher-logit cache that cannot be written: a read-only or missing folder, a full disk."""
