"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.functional.zscore import _zscore
from cmkd_lightning.utilities.validation import (
    Reduction,
    check_non_negative,
    check_pair,
    check_positive,
    check_reduction,
    check_result,
    check_targets,
    log_softmax_safe,
    reduce,
    upcast,
)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    logit_standardization: bool = False,
    eps: float = 1e-7,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Target-class (TCKD) plus non-target-class (NCKD) knowledge distillation.

    .. math::
        \mathcal{L}_{DKD} = \alpha\,T^2\,\mathrm{KL}(b^t \Vert b^s) + \beta\,T^2\,\mathrm{KL}(\tilde p^t \Vert
        \tilde p^s)

    where :math:`b = (p_{gt}, 1 - p_{gt})` is the binary target/rest distribution of ``softmax(z / T)`` and
    :math:`\tilde p = \operatorname{softmax}(z / T - \infty\,\mathbb{1}_{gt})` the distribution over the non-target
    classes (the reference code masks the target column by -1000, which is the same in float32 and float64 for
    logits within 700 of each other; the exact mask also holds for logits far beyond that). The linear warm-up
    ``min(epoch / warmup, 1)`` of the reference is applied by the training module (see
    :class:`~cmkd_lightning.losses.DKDLoss`), not here. Recipes: CIFAR-100 ``alpha = 1, T = 4, beta = 8``
    (2 for res56->res20 and res110->res32; 6 for wrn40_2->wrn16_2, wrn40_2->wrn40_1, vgg13->vgg8 and
    vgg13->mv2; 8 for the other pairs, wrn40_2->shuv1 and wrn40_2->res8x4 included); ImageNet
    ``T = 1, beta = 0.5`` (R34->R18) or 2 (R50->MV1).

    With ``logit_standardization=True`` both logits are first z-scored per sample (unbiased standard deviation
    plus ``eps``, see :func:`zscore`): the "DKD + LS" of Sun et al. (CVPR 2024), whose code z-scores the logits
    and then runs DKD unchanged. Their CIFAR-100 command multiplies ``alpha`` and ``beta`` by 9 and sets
    ``T = 2`` (res32x4->res8x4: ``alpha = 9, beta = 72, T = 2``, CE 1).

    Paper: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        targets: ``(N,)`` class indices of any integer dtype.
        alpha: TCKD weight.
        beta: NCKD weight.
        temperature: ``T > 0``.
        logit_standardization: z-score both logits per sample before the softmax.
        eps: added to the standard deviation of the z-score (used only with ``logit_standardization``).
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"``.
        validate_args: check the values (finite logits, targets in range, finite result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> float(dkd_loss(z, z, torch.tensor([2])))
        0.0
    """
    if validate_args:
        check_non_negative(alpha, "alpha")
        check_non_negative(beta, "beta")
    check_reduction(reduction)
    tckd, nckd = dkd_terms(
        student_logits,
        teacher_logits,
        targets,
        temperature=temperature,
        logit_standardization=logit_standardization,
        eps=eps,
        validate_args=validate_args,
    )
    loss = reduce(temperature**2 * (alpha * tckd + beta * nckd), reduction)
    return check_result(loss, "dkd_loss", student_logits, teacher_logits) if validate_args else loss


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 4.0,
    logit_standardization: bool = False,
    eps: float = 1e-7,
    validate_args: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)`` of :func:`dkd_loss`, each ``(N,)``: before ``alpha``/``beta`` and before ``T^2``.

    ``dkd_loss = reduce(T^2 * (alpha * TCKD + beta * NCKD))``. Arguments as in :func:`dkd_loss`. Like every
    ``*_terms`` function: unweighted, without the temperature factor, one value per sample (``docs/DESIGN.md``).

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> [t.shape for t in dkd_terms(z, z.flip(-1), torch.tensor([2]))]
        [torch.Size([1]), torch.Size([1])]
    """
    check_pair(student_logits, teacher_logits, validate_args)
    targets = check_targets(targets, student_logits, validate_args=validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
        if logit_standardization:
            check_positive(eps, "eps")
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    if logit_standardization:
        zs, zt = _zscore(zs, eps), _zscore(zt, eps)
    zs, zt = zs / temperature, zt / temperature
    # a comparison, not F.one_hot (which may read the targets to check them): no host-device sync
    gt = targets.reshape(-1, 1) == torch.arange(zs.shape[-1], device=zs.device)
    log_ps, log_pt = log_softmax_safe(zs), log_softmax_safe(zt)
    tckd = _kl_rows(_binary_log_probs(log_ps, gt), _binary_log_probs(log_pt, gt))
    nckd = _kl_rows(
        log_softmax_safe(zs.masked_fill(gt, float("-inf"))), log_softmax_safe(zt.masked_fill(gt, float("-inf")))
    )
    return tckd, nckd


def _binary_log_probs(log_p: Tensor, gt: Tensor) -> Tensor:
    """``(N, 2)`` log-probabilities of (target, every other class), from full log-probabilities."""
    log_target = log_p.masked_fill(~gt, float("-inf")).logsumexp(dim=-1)
    log_rest = log_p.masked_fill(gt, float("-inf")).logsumexp(dim=-1)
    return torch.stack((log_target, log_rest), dim=-1).clamp_min(torch.finfo(log_p.dtype).min)


def _kl_rows(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    """Per-row ``KL(p_t || p_s)`` from log-probabilities."""
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1)


__all__ = ["dkd_loss", "dkd_terms"]
