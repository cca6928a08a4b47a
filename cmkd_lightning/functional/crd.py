"""CRD's contrastive objective with a memory bank of negatives (Tian et al., ICLR 2020)."""

from __future__ import annotations

from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional._features import check_feature


def crd_nce_loss(scores: Tensor, num_samples: int, *, eps: float = 1e-7) -> Tensor:
    r"""The NCE loss of one view: the positive against ``K`` noise samples of a uniform noise distribution.

    .. math::
        \mathcal{L} = -\frac{1}{N}\sum_i \Big[\log\frac{P_{i0}}{P_{i0} + K/M + \epsilon}
        + \sum_{k=1}^{K} \log\frac{K/M}{P_{ik} + K/M + \epsilon}\Big]

    where :math:`P_{ik} = \exp(v_i^\top m_{j_k} / \tau) / Z` are the normalised scores (``CRDLoss`` computes them
    from its memory bank), column 0 the positive, and :math:`M` the number of training samples (the noise
    distribution is uniform over them).

    Paper: Tian et al., "Contrastive Representation Distillation", ICLR 2020.

    Args:
        scores: ``(N, K + 1)`` normalised scores, positive first.
        num_samples: ``M``, the training set's size.
        eps: the reference's ``1e-7``.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> round(crd_nce_loss(torch.full((1, 2), 0.5), 2).item(), 4)  # 2 * -log(0.5)
        1.3863
    """
    check_feature(scores, "scores", ndim=2)
    if scores.shape[1] < 2:
        raise InvalidArgumentError(
            f"Expected `scores` to hold a positive and >= 1 negative per row, but got {tuple(scores.shape)}."
        )
    k = scores.shape[1] - 1
    noise = k / float(num_samples)
    log_pos = (scores[:, 0] / (scores[:, 0] + noise + eps)).log()
    log_neg = (noise / (scores[:, 1:] + noise + eps)).log()
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]
