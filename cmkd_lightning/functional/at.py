"""Attention transfer: match normalised spatial attention maps (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cmkd_lightning.functional._features import check_feature_lists


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    r"""Spatial attention map :math:`Q = \operatorname{vec}(\frac{1}{C}\sum_c F_c^p) / \lVert\cdot\rVert_2`.

    Args:
        feature: ``(N, C, H, W)``.
        p: exponent (the authors' 2).

    Returns:
        ``(N, H W)`` rows of unit L2 norm (``F.normalize``'s ``eps = 1e-12``).

    Example:
        >>> attention_map(torch.ones(1, 2, 2, 2)).tolist()
        [[0.5, 0.5, 0.5, 0.5]]
    """
    return F.normalize(feature.pow(p).mean(1).reshape(feature.shape[0], -1))


def at_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], *, p: float = 2.0) -> Tensor:
    r"""Sum over stages of the mean squared difference of the attention maps.

    .. math::
        \mathcal{L}_{AT} = \sum_j \frac{1}{N H_j W_j} \big\lVert Q^s_j - Q^t_j \big\rVert_2^2

    with :func:`attention_map`. When the spatial sizes differ, the larger map is average-pooled to the smaller
    (as the reference code does). The reference (mdistiller, RepDistiller) uses ``p = 2``, every stage after the
    stem, and weight 1000 with cross-entropy weight 1.

    Paper: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

    Args:
        student_features: one ``(N, C_s, H, W)`` tensor per stage.
        teacher_features: one ``(N, C_t, H', W')`` tensor per stage.
        p: exponent of the attention map.

    Returns:
        Scalar loss.

    Example:
        >>> f = [torch.randn(2, 3, 4, 4)]
        >>> at_loss(f, f).item()
        0.0
    """
    check_feature_lists(student_features, teacher_features, ndim=4)
    total = None
    for fs, ft in zip(student_features, teacher_features, strict=True):
        hs, ht = fs.shape[2], ft.shape[2]
        if hs > ht:
            fs = F.adaptive_avg_pool2d(fs, (ht, ht))
        elif hs < ht:
            ft = F.adaptive_avg_pool2d(ft, (hs, hs))
        term = (attention_map(fs, p) - attention_map(ft.detach(), p)).pow(2).mean()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
