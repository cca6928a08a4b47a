"""Vanilla knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.functional.zscore import _zscore
from cmkd_lightning.utilities.validation import (
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
    logit_standardization: bool = False,
    eps: float = 1e-7,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Temperature-scaled KL divergence from the teacher's to the student's softened distribution.

    .. math::
        \mathcal{L}_{KD,i} = T^2 \sum_c p^t_{i,c} \log\frac{p^t_{i,c}}{p^s_{i,c}},\qquad
        p = \operatorname{softmax}(z / T)

    ``"mean"`` is the reference code's ``batchmean``: the mean over samples of the per-sample sum over classes.
    Recipes: CIFAR-100 ``T = 4`` with weights CE 0.1 / KD 0.9; ImageNet ``T = 1``, 0.5 / 0.5.

    With ``logit_standardization=True`` both logits are first z-scored per sample,
    :math:`z \mapsto \operatorname{zscore}(z)` (unbiased standard deviation plus ``eps``, see :func:`zscore`):
    the "KD + LS" of Sun et al. (CVPR 2024), identical to :func:`lskd_loss` at the same ``T`` (their recipe:
    ``T = 2``, weights CE 0.1 / KD 9).

    Paper: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        temperature: softening temperature ``T > 0``.
        logit_standardization: z-score both logits per sample before the softmax.
        eps: added to the standard deviation of the z-score (used only with ``logit_standardization``).
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).
        validate_args: check the values (finite logits, finite result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``; float32 for half-precision inputs.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(kd_loss(z, z))
        0.0
        >>> abs(round(float(kd_loss(z, 10 * z, temperature=2.0, logit_standardization=True)), 6))  # scale ignored
        0.0
    """
    check_pair(student_logits, teacher_logits, validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
        if logit_standardization:
            check_positive(eps, "eps")
    check_reduction(reduction)
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    if logit_standardization:
        zs, zt = _zscore(zs, eps), _zscore(zt, eps)
    loss = reduce(_kd_per_sample(zs, zt, temperature), reduction)
    return check_result(loss, "kd_loss", student_logits, teacher_logits) if validate_args else loss


def _kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample ``T^2 KL`` of :func:`kd_loss`, without checks."""
    log_ps = log_softmax_safe(student_logits / temperature)
    log_pt = log_softmax_safe(teacher_logits / temperature)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1) * temperature**2


__all__ = ["kd_loss"]
