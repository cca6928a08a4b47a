"""Per-sample z-score normalisation of logits (CMKD Eq. 9–11; logit standardisation, Sun et al. 2024)."""

from __future__ import annotations

from torch import Tensor

from cmkd_lightning.utilities.validation import check_logits, check_positive

_MIN_VARIANCE = 1e-30


def zscore(logits: Tensor, eps: float = 1e-7, validate_args: bool = True) -> Tensor:
    r"""Standardise every row of ``logits`` over its classes.

    .. math::
        \hat z_{i,c} = \frac{z_{i,c} - \mu_i}{\sigma_i + \epsilon},\qquad
        \mu_i = \frac{1}{C}\sum_c z_{i,c},\quad
        \sigma_i = \sqrt{\frac{1}{C-1}\sum_c (z_{i,c} - \mu_i)^2}

    The standard deviation is unbiased (``C - 1``) and ``eps`` is added to it, exactly as in the reference code
    of logit-standardised KD. A constant row maps to zeros, with finite gradients (the variance is clamped at
    ``1e-30`` before the square root, which changes no value of a non-constant row in practice).

    Paper: Eq. 9–11 of "Efficient and Robust Knowledge Distillation from A Stronger Teacher Based on
    Correlation Matching" (CMKD); Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

    Args:
        logits: ``(N, C)`` floating-point logits, ``C >= 2``.
        eps: added to the standard deviation.
        validate_args: check the values (finiteness; a host-device sync) and ``eps``; shapes are always checked.

    Returns:
        ``(N, C)`` tensor whose rows have mean 0 and (unbiased) standard deviation ``sigma / (sigma + eps)``.

    Example:
        >>> z = zscore(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> [round(v, 4) for v in z[0].tolist()]
        [-1.0, 0.0, 1.0]
    """
    check_logits(logits, "logits", validate_args)
    if validate_args:
        check_positive(eps, "eps")
    return _zscore(logits, eps)


def _zscore(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """:func:`zscore` without input checks, for callers that validated already.

    Scale-safe: each row is divided by ``s = max(max_c |z_c|, 1)`` (detached) first and ``eps`` by the same ``s``,
    which is the same function in exact arithmetic, ``(z/s - mu/s) / (sigma/s + eps/s)``, but keeps the mean and
    the squares of logits up to the float maximum (e.g. +-3e38 in float32) finite.
    """
    scale = logits.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    scaled = logits / scale
    centred = scaled - scaled.mean(dim=-1, keepdim=True)
    var = centred.pow(2).sum(dim=-1, keepdim=True) / (logits.shape[-1] - 1)
    std = var.clamp_min(_MIN_VARIANCE).sqrt()
    return centred / (std + eps / scale)


__all__ = ["zscore"]
