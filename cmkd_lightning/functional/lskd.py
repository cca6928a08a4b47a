"""Logit-standardised KD (Sun et al., CVPR 2024)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from cmkd_lightning.functional.kd import _kd_per_sample
from cmkd_lightning.functional.zscore import _zscore
from cmkd_lightning.utilities.validation import (
    Reduction,
    check_pair,
    check_positive,
    check_reduction,
    check_result,
    reduce,
    upcast,
)


def lskd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    eps: float = 1e-7,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""KD on z-scored logits: the student matches the teacher's logit *relations*, not their scale.

    .. math::
        \mathcal{L}_{LS,i} = T^2\,\mathrm{KL}\big(\operatorname{softmax}(\hat z^t_i / T)\,\big\Vert\,
        \operatorname{softmax}(\hat z^s_i / T)\big),\qquad \hat z = \operatorname{zscore}(z)

    with the unbiased standard deviation plus ``eps = 1e-7`` (see :func:`zscore`). Reference recipe: base
    temperature 2, weights CE 0.1 / KD 9.

    Paper: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        temperature: base temperature ``T > 0``.
        eps: added to the standard deviation in the z-score.
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"``.
        validate_args: check the values (finite logits, finite result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> abs(round(float(lskd_loss(z, 10 * z)), 6))  # same relations, different scale: no loss
        0.0
    """
    check_pair(student_logits, teacher_logits, validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
        check_positive(eps, "eps")
    check_reduction(reduction)
    zs = _zscore(upcast(student_logits), eps)  # scale-safe: finite for any finite logits
    zt = _zscore(upcast(teacher_logits), eps)
    loss = reduce(_kd_per_sample(zs, zt, temperature), reduction)
    return check_result(loss, "lskd_loss", student_logits, teacher_logits) if validate_args else loss


def ls_kd_loss(*args: Any, **kwargs: Any) -> Tensor:
    """Deprecated alias of :func:`lskd_loss` (the library spells the method ``lskd`` everywhere)."""
    warnings.warn("`ls_kd_loss` is deprecated; use `lskd_loss`.", DeprecationWarning, stacklevel=2)
    return lskd_loss(*args, **kwargs)


__all__ = ["lskd_loss"]
