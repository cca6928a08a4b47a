"""Argument checks shared by the callbacks: errors name the argument, the expectation and what was received."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """Return ``value`` if it is ``None`` or an ``int >= 1`` (not ``bool``), else raise."""
    if value is None:
        return None
    return check_positive_int(value, name, or_none=True)


def check_positive_int(value: Any, name: str, *, or_none: bool = False) -> int:
    """Return ``value`` if it is an ``int >= 1`` (not ``bool``), else raise ``TypeError`` / ``ValueError``."""
    expected = "an int >= 1" + (" or None" if or_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be {expected}, but got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    return value


def check_non_negative_int(value: Any, name: str) -> int:
    """Return ``value`` if it is an ``int >= 0`` (not ``bool``), else raise ``TypeError`` / ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an int >= 0, but got {type(value).__name__} {value!r}.")
    if value < 0:
        raise ValueError(f"Expected `{name}` to be an int >= 0, but got {value!r}.")
    return value


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number ``> 0`` (not ``bool``), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number > 0, but got {type(value).__name__} {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a finite number > 0, but got {value!r}.")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {type(value).__name__} {value!r}.")
    return value


def check_str(value: Any, name: str) -> str:
    """Return ``value`` if it is a ``str``, else raise ``TypeError``."""
    if not isinstance(value, str):
        raise TypeError(f"Expected `{name}` to be a str, but got {type(value).__name__} {value!r}.")
    return value


def check_optional_path(value: Any, name: str) -> Path | None:
    """Return ``value`` as a :class:`~pathlib.Path` (``None`` stays ``None``) if it is a non-empty str or path."""
    if value is None:
        return None
    return check_path(value, name)


def check_path(value: Any, name: str) -> Path:
    """Return ``value`` as a :class:`~pathlib.Path` if it is a non-empty ``str`` or ``os.PathLike``, else raise."""
    if not isinstance(value, (str, Path)):
        raise TypeError(
            f"Expected `{name}` to be a str or pathlib.Path, but got {type(value).__name__} {value!r}."
        )
    if str(value) == "":
        raise ValueError(f"Expected `{name}` to be a non-empty path, but got {value!r}.")
    return Path(value)


def check_filename(value: Any, name: str, suffix: str) -> str:
    """Return ``value`` if it is a plain file name (no folder) ending in ``suffix``, else raise."""
    check_str(value, name)
    if not value.endswith(suffix) or len(value) <= len(suffix) or Path(value).name != value:
        raise ValueError(
            f"Expected `{name}` to be a file name ending in {suffix!r} (no folder), but got {value!r}."
        )
    return value
