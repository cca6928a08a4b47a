"""The one validation layer of the library: argument checks shared by every layer and the data modules.

The functional, losses, metrics, callbacks and data modules all raise through it.
Every error names the argument, what was expected and what was received (style: "Expected `temperature` to be a
number > 0, but got -1."), raised as ``TypeError`` (wrong type) or ``ValueError`` (wrong value), never with
``assert`` (which ``python -O`` strips). Path arguments accept ``str`` and any ``os.PathLike`` and expand ``~``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------- tensors and losses
def check_logits(x: Tensor, name: str = "logits", validate_args: bool = True) -> None:
    """Check that ``x`` is a finite floating-point ``(N, C)`` tensor with ``C >= 2``.

    Type and shape checks are free (no device read) and always run; the finiteness check reads the values (a
    host-device sync on accelerators) and runs only with ``validate_args=True``.

    Raises:
        TypeError: if ``x`` is not a tensor or not floating point.
        ValueError: if ``x`` is not 2-D, has fewer than 2 classes, no rows, or NaN/Inf entries.
    """
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"Expected `{name}` to be a floating-point tensor of logits, but got dtype {x.dtype}.")
    if x.ndim != 2:
        raise InvalidArgumentError(
            f"Expected `{name}` to be 2-D with shape (N, C), but got {x.ndim}-D shape {tuple(x.shape)}."
        )
    if x.shape[0] < 1:
        raise InvalidArgumentError(f"Expected `{name}` to hold at least one sample, but got shape {tuple(x.shape)}.")
    if x.shape[1] < 2:
        raise InvalidArgumentError(f"Expected `{name}` to have at least 2 classes (C >= 2), but got C = {x.shape[1]}.")
    if validate_args and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise InvalidArgumentError(f"Expected `{name}` to be finite, but got {bad} NaN/Inf entries.")


def check_pair(student_logits: Tensor, teacher_logits: Tensor, validate_args: bool = True) -> None:
    """Check both logit tensors (see :func:`check_logits`) and that their shapes agree."""
    check_logits(student_logits, "student_logits", validate_args)
    check_logits(teacher_logits, "teacher_logits", validate_args)
    if student_logits.shape != teacher_logits.shape:
        raise InvalidArgumentError(
            "Expected `student_logits` and `teacher_logits` to have the same shape, but got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )


def check_targets(targets: Tensor | None, logits: Tensor, name: str = "targets", validate_args: bool = True) -> Tensor:
    """Check class-index targets of shape ``(N,)`` with values in ``[0, C)`` and return them as int64.

    The range check reads the values (a host-device sync) and runs only with ``validate_args=True``.

    Raises:
        ValueError: if ``targets`` is None, has the wrong shape, or holds out-of-range classes.
        TypeError: if ``targets`` is not an integer tensor.
    """
    if targets is None:
        raise InvalidArgumentError(f"This loss needs `{name}` (class indices of shape (N,)), but got None.")
    if not isinstance(targets, Tensor):
        raise ArgumentTypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(targets).__name__}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ArgumentTypeError(
            f"Expected `{name}` to be an integer tensor of class indices, but got dtype {targets.dtype}."
        )
    n, c = logits.shape
    if targets.shape != (n,):
        raise InvalidArgumentError(f"Expected `{name}` to have shape ({n},), but got {tuple(targets.shape)}.")
    # int64 whatever the integer dtype (int32, int16, uint8, ...): gather and one_hot take int64 only, and
    # min/max are not implemented for uint16/32/64; a device-side cast, no host read
    targets = targets.long()
    if validate_args and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
        raise InvalidArgumentError(
            f"Expected `{name}` to be class indices in [0, {c}), but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]."
        )
    return targets


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``."""
    if reduction not in _REDUCTIONS:
        raise InvalidArgumentError(f"Expected `reduction` to be one of {_REDUCTIONS}, but got {reduction!r}.")


def check_positive(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise InvalidArgumentError(f"Expected `{name}` to be a finite number > 0, but got {value!r}.")


def check_non_negative(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise InvalidArgumentError(f"Expected `{name}` to be a finite number >= 0, but got {value!r}.")


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """Reduce a per-sample loss vector of shape ``(N,)`` by ``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    check_reduction(reduction)
    raise AssertionError("unreachable")  # pragma: no cover


def check_result(loss: Tensor, name: str, *logits: Tensor) -> Tensor:
    """Raise a clear ``ValueError`` when a loss computed from finite logits is NaN/Inf; return it otherwise.

    Only reached with ``validate_args=True`` (it reads the values). Finite logits can still overflow float32 inside
    a loss whose true value exceeds the float range (e.g. a KL divergence between logits of +-3e38).
    """
    if bool(torch.isfinite(loss).all()):
        return loss
    largest = max(float(x.detach().abs().max()) for x in logits) if logits else float("nan")
    raise InvalidArgumentError(
        f"Expected `{name}` to be finite for finite logits, but it overflowed to NaN/Inf: the logits reach "
        f"|z| = {largest:.3g}, so the true loss exceeds the range of {loss.dtype}. Logits this large come from a "
        "diverged network; lower the learning rate or pass float64 logits."
    )


def log_softmax_safe(x: Tensor, dim: int = -1) -> Tensor:
    """``log_softmax`` whose ``-inf`` entries (a row spanning more than the float range) become ``-finfo.max``.

    Every finite value is unchanged. Only a probability that underflows to exactly 0 is affected, where
    ``p * (log q - log p)`` terms then read ``0 * finite = 0`` instead of ``0 * (-inf + inf) = NaN``.
    """
    return torch.log_softmax(x, dim=dim).clamp_min(torch.finfo(x.dtype).min)


def upcast(x: Tensor) -> Tensor:
    """Return ``x`` in float32 when it is float16/bfloat16, unchanged otherwise (losses never run in half)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------------------------------------- plain arguments
def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) within ``[minimum, maximum]``, else raise.

    Raises:
        TypeError: if ``value`` is not an integer.
        ValueError: if ``value`` lies outside the bounds.
    """
    if maximum is None:
        expected = "an int" if minimum is None else f"an int >= {minimum}"
    elif minimum is None:
        expected = f"an int <= {maximum}"
    else:
        expected = f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"Expected `{name}` to be {expected}, but got {type(value).__name__} {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidArgumentError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    return value


def check_positive_int(value: Any, name: str, *, or_none: bool = False) -> int:
    """Return ``value`` if it is an ``int >= 1`` (not ``bool``), else raise ``TypeError`` / ``ValueError``."""
    expected = "an int >= 1" + (" or None" if or_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"Expected `{name}` to be {expected}, but got {type(value).__name__} {value!r}.")
    if value < 1:
        raise InvalidArgumentError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    return value


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """Return ``value`` if it is ``None`` or an ``int >= 1`` (not ``bool``), else raise."""
    if value is None:
        return None
    return check_positive_int(value, name, or_none=True)


def check_non_negative_int(value: Any, name: str) -> int:
    """Return ``value`` if it is an ``int >= 0`` (not ``bool``), else raise ``TypeError`` / ``ValueError``."""
    return check_int(value, name, minimum=0)


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number ``> 0`` (not ``bool``), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"Expected `{name}` to be a number > 0, but got {type(value).__name__} {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"Expected `{name}` to be a finite number > 0, but got {value!r}.")
    return float(value)


def check_fraction(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a number strictly between 0 and 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise InvalidArgumentError(f"Expected `{name}` to be a number in (0, 1), but got {value!r}.")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"Expected `{name}` to be a bool, but got {type(value).__name__} {value!r}.")
    return value


def check_optional_bool(value: Any, name: str) -> bool | None:
    """Return ``value`` if it is a ``bool`` or ``None``, else raise ``TypeError``."""
    if value is not None and not isinstance(value, bool):
        raise ArgumentTypeError(f"Expected `{name}` to be a bool or None, but got {type(value).__name__} {value!r}.")
    return value


def check_str(value: Any, name: str) -> str:
    """Return ``value`` if it is a ``str``, else raise ``TypeError``."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"Expected `{name}` to be a str, but got {type(value).__name__} {value!r}.")
    return value


# ---------------------------------------------------------------------------------------------- paths
def check_path(value: Any, name: str) -> Path:
    """Return ``value`` (a non-empty ``str`` or ``os.PathLike``) as a :class:`~pathlib.Path` with ``~`` expanded.

    Anything else raises ``TypeError`` or ``ValueError`` naming ``name``.

    Example:
        >>> check_path("~/figs", "dirpath") == Path.home() / "figs"
        True
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"Expected `{name}` to be a str or os.PathLike, but got {type(value).__name__} {value!r}."
        )
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ArgumentTypeError(f"Expected `{name}` to be a str path, but got bytes {text!r}.")
    if text == "":
        raise InvalidArgumentError(f"Expected `{name}` to be a non-empty path, but got {value!r}.")
    return Path(text).expanduser()


def check_optional_path(value: Any, name: str) -> Path | None:
    """:func:`check_path`, with ``None`` passed through."""
    if value is None:
        return None
    return check_path(value, name)


def check_filename(value: Any, name: str, suffix: str) -> str:
    """Return ``value`` if it is a plain file name (no folder) ending in ``suffix``, else raise."""
    check_str(value, name)
    if not value.endswith(suffix) or len(value) <= len(suffix) or Path(value).name != value:
        raise InvalidArgumentError(
            f"Expected `{name}` to be a file name ending in {suffix!r} (no folder), but got {value!r}."
        )
    return value
