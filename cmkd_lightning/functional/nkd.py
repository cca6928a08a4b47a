"""Normalized KD (Yang et al., ICCV 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError
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


def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Target term weighted by the teacher's target probability plus normalised non-target cross-entropy.

    .. math::
        \mathcal{L}_{NKD,i} = -\,p^t_{i,gt}\,\log p^s_{i,gt}
        \;-\; \gamma\,T^2 \sum_{c \ne gt} \tilde p^t_{i,c}\,\log \tilde p^s_{i,c}

    where :math:`p = \operatorname{softmax}(z)` (no temperature, teacher probability detached) and
    :math:`\tilde p = \operatorname{softmax}(z_{\setminus gt} / T)` over the ``C - 1`` non-target classes (target
    column removed). Recipe: ``T = 1, gamma = 1.5`` on ImageNet.

    ``targets`` are class indices of any integer dtype, or ``(N, C)`` soft targets (one-hot, label-smoothed,
    mixup/cutmix mixtures). As in the authors' code, a soft target's class is its arg-max (the first of tied
    classes), and the loss is the same as for that class index.

    Paper: Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels", ICCV 2023.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        targets: ``(N,)`` class indices (any integer dtype) or ``(N, C)`` floating-point soft targets.
        temperature: ``T > 0`` for the non-target term.
        gamma: non-target weight.
        reduction: ``"mean"`` (batch mean), ``"sum"`` or ``"none"``.
        validate_args: check the values (finite logits, targets in range or soft targets finite and >= 0, finite
            result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``. Not zero at ``student == teacher``: it is a cross-entropy.

    Example:
        >>> z = torch.tensor([[0.0, 0.0, 9.0]])
        >>> round(float(nkd_loss(z, z, torch.tensor([2]))), 4)
        1.04
        >>> round(float(nkd_loss(z, z, torch.tensor([[0.0, 0.3, 0.7]]))), 4)  # soft target: class 2
        1.04
    """
    if validate_args:
        check_non_negative(gamma, "gamma")
    check_reduction(reduction)
    target_term, non_target = nkd_terms(
        student_logits, teacher_logits, targets, temperature=temperature, validate_args=validate_args
    )
    loss = reduce(target_term + gamma * temperature**2 * non_target, reduction)
    return check_result(loss, "nkd_loss", student_logits, teacher_logits) if validate_args else loss


def nkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    validate_args: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(target term, non-target cross-entropy)`` of :func:`nkd_loss`, each ``(N,)``, before ``T^2``.

    ``nkd_loss = reduce(target + gamma * T^2 * non_target)``. Arguments as in :func:`nkd_loss`. Like every
    ``*_terms`` function: unweighted, without the temperature factor, one value per sample (``docs/DESIGN.md``).

    Example:
        >>> z = torch.tensor([[0.0, 0.0, 9.0]])
        >>> [round(float(t), 4) for t in nkd_terms(z, z, torch.tensor([2]))]
        [0.0002, 0.6931]
    """
    check_pair(student_logits, teacher_logits, validate_args)
    targets = _class_indices(targets, student_logits, validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    n, c = zs.shape
    idx = targets.reshape(n, 1)
    log_ps = log_softmax_safe(zs)
    with torch.no_grad():
        pt_gt = F.softmax(zt, dim=-1).gather(1, idx).squeeze(1)
    target_term = -pt_gt * log_ps.gather(1, idx).squeeze(1)
    # the C - 1 non-target columns by index (j, skipping the target), not by a boolean mask: a mask's output
    # size is data-dependent, which costs a host-device sync
    rest = torch.arange(c - 1, device=zs.device).expand(n, c - 1)
    rest = rest + (rest >= idx).to(rest.dtype)
    zs_rest = zs.gather(1, rest) / temperature
    zt_rest = zt.gather(1, rest) / temperature
    non_target = -(F.softmax(zt_rest, dim=-1) * log_softmax_safe(zs_rest)).sum(dim=-1)
    return target_term, non_target


def _class_indices(targets: Tensor | None, logits: Tensor, validate_args: bool) -> Tensor:
    """``(N,)`` int64 class indices from class indices of any integer dtype or from ``(N, C)`` soft targets."""
    if not (isinstance(targets, Tensor) and targets.is_floating_point() and targets.ndim == 2):
        return check_targets(targets, logits, validate_args=validate_args)
    if targets.shape != logits.shape:
        raise InvalidArgumentError(
            f"Expected soft `targets` to have the shape of the logits {tuple(logits.shape)}, but got "
            f"{tuple(targets.shape)}."
        )
    if validate_args and not bool((torch.isfinite(targets) & (targets >= 0)).all()):
        raise InvalidArgumentError(
            "Expected soft `targets` to be finite and >= 0, but got NaN, Inf or negative entries."
        )
    return targets.argmax(dim=-1)


__all__ = ["nkd_loss", "nkd_terms"]
