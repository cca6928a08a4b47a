"""Vanilla knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.functional._checks import (
    Reduction,
    check_pair,
    check_positive,
    check_reduction,
    check_result,
    log_softmax_safe,
    reduce,
    upcast,
)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Temperature-scaled KL divergence from the teacher's to the student's softened distribution.

    .. math::
        \mathcal{L}_{KD,i} = T^2 \sum_c p^t_{i,c} \log\frac{p^t_{i,c}}{p^s_{i,c}},\qquad
        p = \operatorname{softmax}(z / T)

    ``"mean"`` is the reference code's ``batchmean``: the mean over samples of the per-sample sum over classes.
    Recipes: CIFAR-100 ``T = 4`` with weights CE 0.1 / KD 0.9; ImageNet ``T = 1``, 0.5 / 0.5.

    Paper: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        temperature: softening temperature ``T > 0``.
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).
        validate_args: check the values (finite logits, finite result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``; float32 for half-precision inputs.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(kd_loss(z, z))
        0.0
    """
    check_pair(student_logits, teacher_logits, validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
    check_reduction(reduction)
    loss = reduce(_kd_per_sample(upcast(student_logits), upcast(teacher_logits), temperature), reduction)
    return check_result(loss, "kd_loss", student_logits, teacher_logits) if validate_args else loss


def _kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample ``T^2 KL`` of :func:`kd_loss`, without checks."""
    log_ps = log_softmax_safe(student_logits / temperature)
    log_pt = log_softmax_safe(teacher_logits / temperature)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1) * temperature**2


__all__ = ["kd_loss"]
