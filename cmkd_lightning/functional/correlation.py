"""Row-wise Pearson and Spearman correlation, shared by DIST, CMKD and the metrics callbacks."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.functional.rank import rank
from cmkd_lightning.functional.soft_rank import soft_rank
from cmkd_lightning.utilities.validation import check_positive


def _check_same_2d(x: Tensor, y: Tensor, names: tuple[str, str]) -> None:
    for t, name in zip((x, y), names):
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(t).__name__}.")
        if not t.is_floating_point():
            raise ArgumentTypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {t.dtype}.")
        if t.ndim != 2:
            raise InvalidArgumentError(
                f"Expected `{name}` to be 2-D with shape (N, C), but got shape {tuple(t.shape)}."
            )
    if x.shape != y.shape:
        raise InvalidArgumentError(
            f"Expected `{names[0]}` and `{names[1]}` to have the same shape, but got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )


def pearson_corr(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Pearson correlation between matching rows of ``x`` and ``y``.

    .. math::
        r_i = \frac{\sum_c (x_{i,c} - \bar x_i)(y_{i,c} - \bar y_i)}
                   {\lVert x_i - \bar x_i\rVert\,\lVert y_i - \bar y_i\rVert + \epsilon}

    ``eps`` sits in the denominator as in the DIST reference code, so a constant row gives ``r = 0`` with
    finite gradients. To correlate columns (DIST's intra-class term) pass ``x.T`` and ``y.T``.

    Paper: Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022; CMKD Eq. 12.

    Args:
        x: ``(N, C)`` floating-point tensor.
        y: ``(N, C)`` floating-point tensor.
        eps: added to the product of the norms.

    Returns:
        ``(N,)`` correlations in ``[-1, 1]``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
        >>> pearson_corr(x, torch.tensor([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])).round(decimals=4)
        tensor([ 1., -1.])
    """
    _check_same_2d(x, y, ("x", "y"))
    check_positive(eps, "eps")
    return _pearson_corr(x, y, eps)


def _pearson_corr(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """:func:`pearson_corr` without input checks."""
    xc = x - x.mean(dim=-1, keepdim=True)
    yc = y - y.mean(dim=-1, keepdim=True)
    return (xc * yc).sum(dim=-1) / (_safe_norm(xc) * _safe_norm(yc) + eps)


def _safe_norm(x: Tensor) -> Tensor:
    """Row-wise L2 norm whose gradient is 0 (not NaN) at the zero vector."""
    sq = x.pow(2).sum(dim=-1)
    zero = sq == 0
    return torch.where(zero, torch.zeros_like(sq), sq.masked_fill(zero, 1.0).sqrt())


def spearman_corr(
    x: Tensor,
    y: Tensor,
    *,
    regularization_strength: float | None = None,
    rank_backend: Literal["auto", "torch", "torchsort"] = "auto",
    eps: float = 1e-8,
) -> Tensor:
    r"""Spearman rank correlation between matching rows of ``x`` and ``y``.

    .. math::
        \rho_i = r\big(\operatorname{rank}(x_i), \operatorname{rank}(y_i)\big)

    With ``regularization_strength=None`` both rows are ranked exactly (ties get their average rank, as
    ``scipy.stats.spearmanr`` does); the result has no useful gradient. With a value ``eps_r > 0``, ``x`` is ranked
    with the differentiable soft rank of Blondel et al. 2020 (see :func:`soft_rank`), while ``y`` (the teacher) is
    still ranked exactly: this is CMKD's Spearman term (Eq. 13).

    Args:
        x: ``(N, C)`` floating-point tensor (the student side when soft).
        y: ``(N, C)`` floating-point tensor (ranked exactly, never differentiated).
        regularization_strength: soft-rank strength for ``x``; ``None`` for exact ranks.
        rank_backend: soft-rank backend, see :func:`soft_rank`.
        eps: added to the denominator of the Pearson correlation of the ranks.

    Returns:
        ``(N,)`` correlations in ``[-1, 1]``.

    Example:
        >>> x = torch.tensor([[0.1, 5.0, 2.0]])
        >>> spearman_corr(x, torch.tensor([[1.0, 9.0, 3.0]])).round(decimals=4)
        tensor([1.])
    """
    _check_same_2d(x, y, ("x", "y"))
    check_positive(eps, "eps")
    if regularization_strength is None:
        rx = rank(x)
    else:
        rx = soft_rank(x, regularization_strength, backend=rank_backend)
    with torch.no_grad():
        ry = rank(y)
    return _pearson_corr(rx, ry.to(rx.dtype), eps)


__all__ = ["pearson_corr", "spearman_corr"]
