"""FitNet: regress the teacher's hint layer from the student's guided layer (Romero et al., ICLR 2015)."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional._features import check_feature


def fitnet_loss(student_hint: Tensor, teacher_hint: Tensor) -> Tensor:
    r"""Mean squared error between the regressed student feature and the teacher's hint.

    .. math::
        \mathcal{L}_{FitNet} = \frac{1}{N C H W}\sum_{n,c,h,w} \big(r(F_s)_{nchw} - F^t_{nchw}\big)^2

    where :math:`r` is the trainable regressor (``FitNetLoss``'s connector) already applied to ``student_hint``.
    The reference (mdistiller) weighs it by 100 with cross-entropy weight 1.

    Paper: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

    Args:
        student_hint: ``(N, C, H, W)`` the regressor's output.
        teacher_hint: ``(N, C, H, W)`` the teacher's hint feature (no gradient reaches it).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> fitnet_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)).item()
        1.0
    """
    check_feature(student_hint, "student_hint")
    check_feature(teacher_hint, "teacher_hint")
    if student_hint.shape != teacher_hint.shape:
        raise InvalidArgumentError(
            "Expected `student_hint` and `teacher_hint` to have the same shape, but got "
            f"{tuple(student_hint.shape)} and {tuple(teacher_hint.shape)}."
        )
    return F.mse_loss(student_hint, teacher_hint.detach())
