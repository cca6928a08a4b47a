"""Argument checks and DataLoader settings shared by the datamodules.

Errors name the argument, what was expected and what was received (``ValueError``/``TypeError``, never
``assert``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) within ``[minimum, maximum]``, else raise.

    Raises:
        TypeError: if ``value`` is not an integer.
        ValueError: if ``value`` lies outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int, but got {type(value).__name__} {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            expected = f"an int >= {minimum}"
        elif minimum is None:
            expected = f"an int <= {maximum}"
        else:
            expected = f"an int in [{minimum}, {maximum}]"
        raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {type(value).__name__} {value!r}.")
    return value


def check_optional_bool(value: Any, name: str) -> bool | None:
    """Return ``value`` if it is a ``bool`` or ``None``, else raise ``TypeError``."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool or None, but got {type(value).__name__} {value!r}.")
    return value


def check_fraction(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a number strictly between 0 and 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"Expected `{name}` to be a number in (0, 1), but got {value!r}.")
    return float(value)


def check_path(value: Any, name: str) -> Path:
    """Return ``value`` as a :class:`~pathlib.Path` if it is a ``str`` or ``os.PathLike``, else raise."""
    if not isinstance(value, (str, Path)):
        raise TypeError(f"Expected `{name}` to be a str or pathlib.Path, but got {type(value).__name__}.")
    if str(value) == "":
        raise ValueError(f"Expected `{name}` to be a non-empty path, but got {value!r}.")
    return Path(value).expanduser()


def loader_kwargs(batch_size: int, num_workers: int, pin_memory: bool | None) -> dict[str, Any]:
    """Keyword arguments common to every DataLoader of a datamodule.

    ``pin_memory=None`` pins host memory exactly when CUDA is available; workers are kept alive between
    epochs (``persistent_workers``) whenever there are any.
    """
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": pin,
        "persistent_workers": num_workers > 0,
    }
