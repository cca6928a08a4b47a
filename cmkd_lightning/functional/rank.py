"""Exact (hard) ranks with average ties, vectorised over rows."""

from __future__ import annotations

import torch
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError


def rank(x: Tensor) -> Tensor:
    r"""Ascending ranks ``1..C`` of every row of ``x``; tied values share their average rank.

    Equals ``scipy.stats.rankdata(row, method="average")`` row by row. Sorting-based, ``O(N C log C)``, with no
    Python loop; not differentiable (use :func:`soft_rank` for gradients).

    Args:
        x: ``(N, C)`` tensor.

    Returns:
        ``(N, C)`` tensor of ranks in the dtype of ``x`` (float32 for integer inputs).

    Example:
        >>> rank(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
        tensor([[3.5000, 1.0000, 3.5000, 2.0000]])
    """
    if x.ndim != 2:
        raise InvalidArgumentError(f"Expected `x` to be 2-D with shape (N, C), but got shape {tuple(x.shape)}.")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    with torch.no_grad():
        n, c = x.shape
        # float32 holds the integer sums exactly up to C ~ 5000; float64 only where the input already is.
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        sorted_x, order = torch.sort(x, dim=-1)  # tie order is irrelevant: ties get their average rank
        new_group = torch.ones_like(sorted_x, dtype=torch.bool)
        new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
        group = new_group.cumsum(dim=-1) - 1  # group id per sorted position, 0..G-1 within each row
        positions = torch.arange(1, c + 1, device=x.device, dtype=work).expand(n, c)
        sums = torch.zeros(n, c, device=x.device, dtype=work).scatter_add_(1, group, positions)
        counts = torch.zeros(n, c, device=x.device, dtype=work).scatter_add_(1, group, torch.ones_like(positions))
        avg = (sums / counts.clamp_min(1)).gather(1, group)
        ranks = torch.empty_like(avg).scatter_(1, order, avg)
    return ranks.to(out_dtype)


__all__ = ["rank"]
