"""Shape checks shared by the feature-based losses (no device reads)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError


def check_feature(x: Tensor, name: str, ndim: int | None = None) -> None:
    """A floating-point tensor with a batch dimension (and ``ndim`` dimensions when given)."""
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {x.dtype}.")
    if ndim is not None and x.ndim != ndim:
        raise InvalidArgumentError(f"Expected `{name}` to be {ndim}-D, but got shape {tuple(x.shape)}.")
    if x.ndim < 2 or x.shape[0] < 1:
        raise InvalidArgumentError(f"Expected `{name}` to have shape (N, ...) with N >= 1, but got {tuple(x.shape)}.")


def check_feature_lists(student: Sequence[Tensor], teacher: Sequence[Tensor], ndim: int | None = None) -> None:
    """Two equally long, non-empty lists of features with one batch size."""
    if len(student) != len(teacher) or not student:
        raise InvalidArgumentError(
            "Expected `student_features` and `teacher_features` to be non-empty lists of the same length, "
            f"but got {len(student)} and {len(teacher)}."
        )
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        check_feature(s, f"student_features[{i}]", ndim)
        check_feature(t, f"teacher_features[{i}]", ndim)
        if s.shape[0] != t.shape[0]:
            raise InvalidArgumentError(
                f"Expected `student_features[{i}]` and `teacher_features[{i}]` to have the same batch size, "
                f"but got {s.shape[0]} and {t.shape[0]}."
            )
