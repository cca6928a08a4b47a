"""Per-row inverse temperatures that give a softmax a chosen perplexity (t-SNE's calibration, for logit rows)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError


def check_perplexity(perplexity: float | None, num_classes: int | None = None) -> None:
    """Raise unless ``perplexity`` is ``None`` or a number ``> 1`` (and ``< num_classes`` when given)."""
    if perplexity is None:
        return
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not perplexity > 1:
        raise InvalidArgumentError(f"Expected `target_perplexity` to be None or a number > 1, but got {perplexity!r}.")
    if num_classes is not None and not perplexity < num_classes:
        raise InvalidArgumentError(
            f"Expected `target_perplexity` to be below the number of classes ({num_classes}), but got {perplexity!r}."
        )


def perplexity_scale(logits: Tensor, perplexity: float, iterations: int = 12) -> Tensor:
    r"""Per-row :math:`b_i > 0` with :math:`\exp H(\operatorname{softmax}(b_i x_i)) = k` (the perplexity ``k``).

    :math:`H(b) = \log \sum_c e^{b x_c} - b\,\mathbb{E}_p[x]` falls monotonically from :math:`\log C` (``b = 0``)
    to the log of the number of tied maxima (``b -> inf``), with :math:`dH/d\log b = -b^2 \operatorname{Var}_p(x)`.
    Newton steps on :math:`\log b` (each clamped to ``[-1, 1]``), a fixed number of them so that nothing is read
    back from the device, starting from the Gaussian-row guess :math:`b_0 = \sqrt{2(\log C - \log k)} / \sigma_i`.
    Rows that cannot reach ``k`` (e.g. constant rows) end at the clamp ``b = e^{\pm 10}/\sigma_i``
    (``\sigma_i >= 10^{-12}``).

    Args:
        logits: ``(N, C)`` rows ``x_i`` (e.g. z-scored teacher logits); no gradient flows.
        perplexity: the target ``k``, ``1 < k < C``.
        iterations: Newton steps.

    Returns:
        ``(N, 1)`` scales ``b_i`` in the dtype of ``logits`` (float32 for half inputs); the temperature is ``1 / b_i``.

    Example:
        >>> x = torch.randn(4, 100, dtype=torch.float64)
        >>> b = perplexity_scale(x, 10.0)
        >>> p = torch.softmax(b * x, dim=-1)
        >>> torch.allclose((-(p * p.log()).sum(-1)).exp(), torch.full((4,), 10.0, dtype=torch.float64))
        True
    """
    check_perplexity(perplexity, logits.shape[-1])
    with torch.no_grad():
        x = logits.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        x = x - x.mean(dim=-1, keepdim=True)
        sigma = x.std(dim=-1, keepdim=True, correction=0).clamp_min(1e-12)  # a constant row: b stays finite
        target = math.log(perplexity)
        guess = math.log(math.sqrt(2.0 * max(math.log(x.shape[-1]) - target, 1e-3)))
        log_b = guess - sigma.log()
        low, high = -10.0 - sigma.log(), 10.0 - sigma.log()
        for _ in range(iterations):
            b = log_b.exp()
            log_p = torch.log_softmax(b * x, dim=-1)
            p = log_p.exp()
            mean = (p * x).sum(dim=-1, keepdim=True)
            var = (p * (x - mean) ** 2).sum(dim=-1, keepdim=True)
            entropy = -(p * log_p).sum(dim=-1, keepdim=True)
            slope = (b * b * var).clamp_min(1e-12)
            step = ((entropy - target) / slope).clamp(-1.0, 1.0)
            log_b = torch.minimum(torch.maximum(log_b + step, low), high)
        return log_b.exp()


__all__ = ["check_perplexity", "perplexity_scale"]
