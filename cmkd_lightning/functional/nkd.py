"""Normalized KD (Yang et al., ICCV 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.functional._checks import (
    Reduction,
    check_non_negative,
    check_pair,
    check_positive,
    check_reduction,
    check_targets,
    reduce,
    upcast,
)


def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Target term weighted by the teacher's target probability plus normalised non-target cross-entropy.

    .. math::
        \mathcal{L}_{NKD,i} = -\,p^t_{i,gt}\,\log p^s_{i,gt}
        \;-\; \gamma\,T^2 \sum_{c \ne gt} \tilde p^t_{i,c}\,\log \tilde p^s_{i,c}

    where :math:`p = \operatorname{softmax}(z)` (no temperature, teacher probability detached) and
    :math:`\tilde p = \operatorname{softmax}(z_{\setminus gt} / T)` over the ``C - 1`` non-target classes (target
    column removed). Recipe: ``T = 1, gamma = 1.5`` on ImageNet.

    Paper: Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels", ICCV 2023.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        targets: ``(N,)`` integer class indices.
        temperature: ``T > 0`` for the non-target term.
        gamma: non-target weight.
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``. Not zero at ``student == teacher``: it is a cross-entropy.

    Example:
        >>> z = torch.tensor([[0.0, 0.0, 9.0]])
        >>> round(float(nkd_loss(z, z, torch.tensor([2]))), 4)
        1.04
    """
    check_non_negative(gamma, "gamma")
    check_reduction(reduction)
    target_term, non_target = nkd_terms(student_logits, teacher_logits, targets, temperature=temperature)
    return reduce(target_term + gamma * non_target, reduction)


def nkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(target term, T^2 * non-target cross-entropy)`` of :func:`nkd_loss`, each ``(N,)``."""
    check_pair(student_logits, teacher_logits)
    check_targets(targets, student_logits)
    check_positive(temperature, "temperature")
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    n, c = zs.shape
    idx = targets.view(n, 1)
    log_ps = F.log_softmax(zs, dim=-1)
    with torch.no_grad():
        pt_gt = F.softmax(zt, dim=-1).gather(1, idx).squeeze(1)
    target_term = -pt_gt * log_ps.gather(1, idx).squeeze(1)
    keep = torch.ones_like(zs, dtype=torch.bool).scatter_(1, idx, False)
    zs_rest = zs[keep].view(n, c - 1) / temperature
    zt_rest = zt[keep].view(n, c - 1) / temperature
    non_target = -(F.softmax(zt_rest, dim=-1) * F.log_softmax(zs_rest, dim=-1)).sum(dim=-1)
    return target_term, non_target * temperature**2


__all__ = ["nkd_loss", "nkd_terms"]
