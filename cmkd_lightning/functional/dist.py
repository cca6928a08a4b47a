"""DIST: distillation by inter- and intra-class Pearson correlation (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional.correlation import _pearson_corr
from cmkd_lightning.utilities.validation import check_non_negative, check_pair, check_positive, check_result, upcast


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
    reduction: Literal["mean"] = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Inter-class plus intra-class relation loss of DIST.

    .. math::
        y = \operatorname{softmax}(z / \tau),\quad
        \mathcal{L}_{inter} = 1 - \frac{1}{N}\sum_i r(y^s_{i,:}, y^t_{i,:}),\quad
        \mathcal{L}_{intra} = 1 - \frac{1}{C}\sum_c r(y^s_{:,c}, y^t_{:,c}),

    .. math::
        \mathcal{L}_{DIST} = \tau^2\,(\beta\,\mathcal{L}_{inter} + \gamma\,\mathcal{L}_{intra})

    with :func:`pearson_corr` (``eps = 1e-8`` in the denominator). The intra-class term correlates each class's
    probabilities across the batch, so it is a batch statistic: only ``reduction="mean"`` is defined. **Batch size
    1:** a single sample carries no intra-class (across-batch) information, so the intra-class term is defined
    as 0 and the loss is ``tau^2 * beta * L_inter``. Recipes: ``tau = 4`` (CIFAR-100) or 1 (ImageNet), overall
    weight 2.

    Paper: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.
        temperature: ``tau > 0``.
        beta: inter-class weight.
        gamma: intra-class weight.
        eps: Pearson denominator epsilon.
        reduction: only ``"mean"``.
        validate_args: check the values (finite logits, finite result; host-device syncs) and the
            scalar arguments. Shape and dtype checks always run. Training modules pass ``False``.

    Returns:
        Scalar loss (float32 for half-precision inputs).

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
        >>> round(float(dist_loss(z, z)), 3)
        0.0
    """
    inter, intra = dist_terms(
        student_logits, teacher_logits, temperature=temperature, eps=eps, validate_args=validate_args
    )
    if validate_args:
        check_non_negative(beta, "beta")
        check_non_negative(gamma, "gamma")
    if reduction != "mean":
        raise InvalidArgumentError(
            "Expected `reduction` to be 'mean' for DIST (its intra-class term is a batch statistic), "
            f"but got {reduction!r}."
        )
    loss = temperature**2 * (beta * inter + gamma * intra)
    return check_result(loss, "dist_loss", student_logits, teacher_logits) if validate_args else loss


def dist_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    eps: float = 1e-8,
    validate_args: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(L_inter, L_intra)`` of :func:`dist_loss`: two scalars, before ``beta``/``gamma`` and before ``tau^2``.

    ``dist_loss = tau^2 * (beta * L_inter + gamma * L_intra)``. Arguments as in :func:`dist_loss`. Unweighted and
    without the temperature factor like every ``*_terms`` function, but scalars rather than per-sample values:
    ``L_intra`` is a statistic of the batch's columns, so neither term has a per-sample form (``docs/DESIGN.md``).

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
        >>> [round(float(t), 4) for t in dist_terms(z, z)]
        [0.0, 0.0]
    """
    check_pair(student_logits, teacher_logits, validate_args)
    if validate_args:
        check_positive(temperature, "temperature")
        check_positive(eps, "eps")
    ys = (upcast(student_logits) / temperature).softmax(dim=-1)
    yt = (upcast(teacher_logits) / temperature).softmax(dim=-1)
    inter = 1.0 - _pearson_corr(ys, yt, eps).mean()
    if ys.shape[0] < 2:
        intra = inter.new_zeros(())
    else:
        intra = 1.0 - _pearson_corr(ys.t(), yt.t(), eps).mean()
    return inter, intra


__all__ = ["dist_loss", "dist_terms"]
