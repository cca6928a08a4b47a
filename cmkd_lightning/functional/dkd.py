"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

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

_MASK = 1000.0


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Target-class (TCKD) plus non-target-class (NCKD) knowledge distillation.

    .. math::
        \mathcal{L}_{DKD} = \alpha\,T^2\,\mathrm{KL}(b^t \Vert b^s) + \beta\,T^2\,\mathrm{KL}(\tilde p^t \Vert
        \tilde p^s)

    where :math:`b = (p_{gt}, 1 - p_{gt})` is the binary target/rest distribution of ``softmax(z / T)`` and
    :math:`\tilde p = \operatorname{softmax}(z / T - 1000\,\mathbb{1}_{gt})` the distribution over the non-target
    classes (the target column masked by -1000, as in the reference code). The linear warm-up
    ``min(epoch / warmup, 1)`` of the reference is applied by the training module (see
    :class:`~cmkd_lightning.losses.DKDLoss`), not here. Recipes: CIFAR-100 ``alpha = 1, T = 4, beta = 8``
    (2 for res56->res20 and res110->res32, 6 for WRN and VGG pairs); ImageNet ``T = 1, beta = 0.5``
    (R34->R18) or 2 (R50->MV1).

    Paper: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        targets: ``(N,)`` integer class indices.
        alpha: TCKD weight.
        beta: NCKD weight.
        temperature: ``T > 0``.
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(dkd_loss(z, z, torch.tensor([2])))
        0.0
    """
    check_non_negative(alpha, "alpha")
    check_non_negative(beta, "beta")
    check_reduction(reduction)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, temperature=temperature)
    return reduce(alpha * tckd + beta * nckd, reduction)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(T^2 * TCKD, T^2 * NCKD)`` of :func:`dkd_loss`, each of shape ``(N,)``, unweighted."""
    check_pair(student_logits, teacher_logits)
    check_targets(targets, student_logits)
    check_positive(temperature, "temperature")
    zs = upcast(student_logits) / temperature
    zt = upcast(teacher_logits) / temperature
    gt = F.one_hot(targets, zs.shape[-1]).to(torch.bool)
    log_ps, log_pt = F.log_softmax(zs, dim=-1), F.log_softmax(zt, dim=-1)
    tckd = _kl_rows(_binary_log_probs(log_ps, gt), _binary_log_probs(log_pt, gt))
    nckd = _kl_rows(F.log_softmax(zs - _MASK * gt, dim=-1), F.log_softmax(zt - _MASK * gt, dim=-1))
    return tckd * temperature**2, nckd * temperature**2


def _binary_log_probs(log_p: Tensor, gt: Tensor) -> Tensor:
    """``(N, 2)`` log-probabilities of (target, every other class), from full log-probabilities."""
    log_target = log_p.masked_fill(~gt, float("-inf")).logsumexp(dim=-1)
    log_rest = log_p.masked_fill(gt, float("-inf")).logsumexp(dim=-1)
    return torch.stack((log_target, log_rest), dim=-1)


def _kl_rows(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    """Per-row ``KL(p_t || p_s)`` from log-probabilities."""
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1)


__all__ = ["dkd_loss", "dkd_terms"]
