"""Overhaul of feature distillation: partial L2 on pre-ReLU features with a margin (Heo et al., ICCV 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional._features import check_feature_lists


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    r"""The margin :math:`m_c = E[x \mid x < 0]` of a channel whose pre-activations are :math:`N(\beta_c, \gamma_c^2)`.

    .. math::
        m_c = \beta_c - |\gamma_c|\,\frac{\varphi(\beta_c/|\gamma_c|)}{\Phi(-\beta_c/|\gamma_c|)}
        \quad\text{if } \Phi(-\beta_c/|\gamma_c|) > 0.001, \text{ else } -3|\gamma_c|

    with :math:`\gamma, \beta` the affine weight and bias of the BatchNorm before the ReLU (the teacher's).
    Computed in float64 and returned in the dtype of ``bn_weight``.

    Args:
        bn_weight: ``(C,)``.
        bn_bias: ``(C,)``.

    Returns:
        ``(C,)`` margins (all negative).

    Example:
        >>> round(float(ofd_margin(torch.ones(1), torch.zeros(1))[0]), 4)  # -sqrt(2 / pi)
        -0.7979
    """
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -s * pdf / cdf + m, -3 * s)
    return margin.to(bn_weight.dtype)


def ofd_partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    r"""Partial L2 of one stage, summed over channels and positions, averaged over the batch.

    .. math::
        d(s, t) = \begin{cases} (s - m)^2 & s > m,\ t \le m \\ (s - t)^2 & s > t,\ m < t \le 0 \\
        (s - t)^2 & t > 0 \\ 0 & \text{otherwise} \end{cases}

    with the teacher's target :math:`t` clipped below at :math:`m` in effect (no penalty where both lie below).

    Args:
        student: ``(N, C, H, W)`` the connector's output.
        teacher: ``(N, C, H, W)`` the teacher's pre-ReLU feature.
        margin: ``(C,)``.

    Returns:
        Scalar.
    """
    m = margin.to(student).view(1, -1, 1, 1)
    t = teacher.detach()
    loss = (
        (student - m) ** 2 * ((student > m) & (t <= m)).to(student.dtype)
        + (student - t) ** 2 * ((student > t) & (t > m) & (t <= 0)).to(student.dtype)
        + (student - t) ** 2 * (t > 0).to(student.dtype)
    )
    return loss.abs().mean(dim=0).sum()


def ofd_loss(
    student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], margins: Sequence[Tensor]
) -> Tensor:
    r"""OFD over stages: :math:`\sum_j d(r_j(F^s_j), \operatorname{pool}(F^t_j)) / 2^{J - j}`, j = 1..J.

    The teacher's feature is average-pooled to the student's spatial size; the last stage weighs 1, the one
    before 1/2, and so on (the reference's ``1 / 2 ** (feat_num - i - 1)``). The connectors :math:`r_j` (1x1
    conv + BN) are applied by ``OFDLoss`` before this call. Reference weight 1e-3, cross-entropy weight 1.

    Paper: Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

    Args:
        student_features: ``(N, C_j, H_j, W_j)`` per stage, after the connectors.
        teacher_features: ``(N, C_j, H'_j, W'_j)`` pre-ReLU teacher features.
        margins: ``(C_j,)`` per stage (:func:`ofd_margin`).

    Returns:
        Scalar loss.

    Example:
        >>> f = [torch.randn(2, 3, 4, 4)]
        >>> ofd_loss(f, f, [torch.full((3,), -0.5)]).item()
        0.0
    """
    check_feature_lists(student_features, teacher_features, ndim=4)
    if len(margins) != len(student_features):
        raise InvalidArgumentError(
            f"Expected one margin per stage ({len(student_features)}), but got {len(margins)} margins."
        )
    n = len(student_features)
    total = None
    for i, (fs, ft, margin) in enumerate(zip(student_features, teacher_features, margins, strict=True)):
        if fs.shape[1] != ft.shape[1] or margin.shape != (fs.shape[1],):
            raise InvalidArgumentError(
                f"Expected stage {i}'s student feature, teacher feature and margin to have the same channels, "
                f"but got {fs.shape[1]}, {ft.shape[1]} and margin shape {tuple(margin.shape)}."
            )
        term = ofd_partial_l2(fs, F.adaptive_avg_pool2d(ft, fs.shape[-2:]), margin) / 2 ** (n - i - 1)
        total = term if total is None else total + term
    return total
