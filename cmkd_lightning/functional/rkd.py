"""Relational KD: match the distances and angles between the samples of a batch (Park et al., CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from cmkd_lightning.functional._features import check_feature_lists


def pairwise_distances(embeddings: Tensor, *, squared: bool = False, eps: float = 1e-12) -> Tensor:
    r"""Euclidean distances between the rows of ``embeddings``, with a zero diagonal.

    .. math::
        d_{ij} = \sqrt{\max(\lVert e_i\rVert^2 + \lVert e_j\rVert^2 - 2 e_i^\top e_j, \epsilon)}

    (without the square root when ``squared``).

    Args:
        embeddings: ``(N, D)``.
        squared: return squared distances.
        eps: lower clamp before the square root.

    Returns:
        ``(N, N)``.

    Example:
        >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]])).tolist()
        [[0.0, 5.0], [5.0, 0.0]]
    """
    sq = embeddings.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * embeddings @ embeddings.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return d.masked_fill(eye, 0.0)


def _normalise_by_positive_mean(d: Tensor) -> Tensor:
    # the mean of the positive entries, without the boolean indexing that reads the count on the host
    positive = (d > 0).to(d.dtype)
    return d / ((d * positive).sum() / positive.sum())


def rkd_distance_loss(student: Tensor, teacher: Tensor, *, squared: bool = False, eps: float = 1e-12) -> Tensor:
    r"""Smooth-L1 between the pairwise distances, each normalised by the mean of its positive entries."""
    ds = _normalise_by_positive_mean(pairwise_distances(student, squared=squared, eps=eps))
    with torch.no_grad():
        dt = _normalise_by_positive_mean(pairwise_distances(teacher, squared=squared, eps=eps))
    return F.smooth_l1_loss(ds, dt)


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (N, N, D): e_j - e_i, unit length
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)  # cos of the angle at i between j and k


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    r"""Smooth-L1 between the cosines of all angles :math:`\angle e_j e_i e_k` of the batch (``N^3`` triplets)."""
    with torch.no_grad():
        at = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), at)


def rkd_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    r"""Distance-wise plus angle-wise relational loss.

    .. math::
        \mathcal{L}_{RKD} = w_d\, \ell_{\delta}\Big(\frac{d^s}{\mu^s}, \frac{d^t}{\mu^t}\Big)
        + w_a\, \ell_{\delta}\big(\cos\angle^s, \cos\angle^t\big)

    with :math:`d` the pairwise distances (:func:`pairwise_distances`), :math:`\mu` the mean of their positive
    entries, :math:`\ell_\delta` the mean smooth-L1 (Huber, :math:`\delta = 1`) and the cosines taken over every
    triplet of the batch. Features are flattened to ``(N, D)``. Defaults: the reference's (mdistiller) distance
    weight 25, angle weight 50, on the pooled features, loss weight 1 and cross-entropy weight 1.

    Paper: Park et al., "Relational Knowledge Distillation", CVPR 2019.

    Args:
        student_embeddings: ``(N, ...)``.
        teacher_embeddings: ``(N, ...)``.
        distance_weight: ``w_d``.
        angle_weight: ``w_a``.
        squared: squared distances.
        eps: distance clamp.

    Returns:
        Scalar loss.

    Example:
        >>> e = torch.randn(4, 3)
        >>> rkd_loss(e, 2 * e).item()
        0.0
    """
    check_feature_lists([student_embeddings], [teacher_embeddings])
    s = student_embeddings.reshape(student_embeddings.shape[0], -1)
    t = teacher_embeddings.detach().reshape(teacher_embeddings.shape[0], -1)
    return distance_weight * rkd_distance_loss(s, t, squared=squared, eps=eps) + angle_weight * rkd_angle_loss(s, t)
