"""ReviewKD's hierarchical context loss (Chen et al., CVPR 2021)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional._features import check_feature_lists


def hcl_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    r"""Hierarchical context loss: MSE at full resolution and after pooling to 4x4, 2x2 and 1x1.

    .. math::
        \mathcal{L}_{HCL} = \sum_j \frac{\operatorname{MSE}(F^s_j, F^t_j) + \sum_{l} w_l\,
        \operatorname{MSE}(P_l F^s_j, P_l F^t_j)}{1 + \sum_l w_l}

    over the levels :math:`l \in (4, 2, 1)` smaller than the feature's height :math:`H_j`, with weights
    :math:`w = 1/2, 1/4, 1/8` in the order the levels are used and :math:`P_l` adaptive average pooling to
    :math:`l \times l`. ``ReviewKDLoss`` applies the attention-based fusion (ABF) to the student's features
    first. Reference weight 1 (5 for ResNet32x4 -> ResNet8x4), a 20-epoch warm-up, cross-entropy weight 1.

    Paper: Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021.

    Args:
        student_features: ``(N, C_j, H_j, W_j)`` per level, same shapes as the teacher's.
        teacher_features: ``(N, C_j, H_j, W_j)`` per level.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> hcl_loss([torch.ones(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)]).item()
        1.0
    """
    check_feature_lists(student_features, teacher_features, ndim=4)
    total = None
    for i, (fs, ft) in enumerate(zip(student_features, teacher_features, strict=True)):
        if fs.shape != ft.shape:
            raise InvalidArgumentError(
                f"Expected the student's and teacher's level-{i} features to have the same shape, but got "
                f"{tuple(fs.shape)} and {tuple(ft.shape)}."
            )
        ft = ft.detach()
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            norm += weight
        total = loss / norm if total is None else total + loss / norm
    return total
