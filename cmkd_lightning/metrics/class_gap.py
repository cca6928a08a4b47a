"""The class-logit gap behind Fig. 9: per true class, how the student's mean logits differ from the teacher's."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.utilities.validation import check_pair, check_targets

#: Upper end of the colour scale of :func:`logit_difference` in DKD's figure (its ``MAX_DIFF``).
DKD_MAX_DIFF = 3.0
GAP_MATRICES = ("logit_difference", "correlation_gap")


def class_correlation(class_means: Tensor) -> Tensor:
    r"""Pearson correlation between the mean logit vectors of every pair of classes.

    .. math::
        R_{ab} = \operatorname{pearson}(\bar z_a, \bar z_b),\qquad
        \bar z_a = \frac{1}{|\{i: y_i = a\}|} \sum_{i: y_i = a} z_i \in \mathbb{R}^C

    Rows of ``class_means`` that hold NaN (classes without samples) or are constant give NaN rows and columns.

    Args:
        class_means: ``(K, C)`` mean logits per true class.

    Returns:
        ``(K, K)`` symmetric matrix with ones on the diagonal (NaN for the classes above), float64.

    Example:
        >>> class_correlation(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])).round(decimals=4)
        tensor([[ 1., -1.],
                [-1.,  1.]], dtype=torch.float64)
    """
    m = class_means.double()
    centred = m - m.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    unit = centred / norms.masked_fill(norms == 0, float("nan")).unsqueeze(1)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def logit_difference(student_class_means: Tensor, teacher_class_means: Tensor) -> Tensor:
    r"""``|\bar z^s_{a,j} - \bar z^t_{a,j}|``: mean student vs mean teacher logit per (true class, output class).

    .. math::
        D_{aj} = \left|\bar z^s_{a,j} - \bar z^t_{a,j}\right|\ (a \ne j),\qquad D_{aa} = 0

    The matrix of the paper's Fig. 9, which follows DKD's visualisation: row ``a`` the true class, column ``j``
    the output class, diagonal zeroed, drawn on the fixed scale ``[0, 3]`` (:data:`DKD_MAX_DIFF`).

    Args:
        student_class_means: ``(K, C)`` mean student logits per true class.
        teacher_class_means: ``(K, C)`` mean teacher logits per true class.

    Returns:
        ``(K, C)`` float64 matrix, ``>= 0``, zero where ``a == j`` (NaN rows for classes without samples).

    Example:
        >>> logit_difference(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        tensor([[0.0000, 2.0000],
                [0.5000, 0.0000]], dtype=torch.float64)
    """
    diff = (student_class_means.double() - teacher_class_means.double()).abs()
    k = min(diff.shape)
    diff[torch.arange(k), torch.arange(k)] = 0.0
    return diff


def correlation_gap(student_class_means: Tensor, teacher_class_means: Tensor) -> Tensor:
    r"""``|R^t - R^s|`` of :func:`class_correlation`, with the diagonal set to zero.

    A second view of Fig. 9's caption ("the difference in the correlation matrix of the global logits"): small
    everywhere when the student relates the classes as the teacher does.

    Args:
        student_class_means: ``(K, C)`` mean student logits per true class.
        teacher_class_means: ``(K, C)`` mean teacher logits per true class.

    Returns:
        ``(K, K)`` float64 matrix in ``[0, 2]`` (NaN rows/columns for classes without samples).

    Example:
        >>> correlation_gap(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.eye(2, 3) + 1)
        tensor([[0.0000, 0.5000],
                [0.5000, 0.0000]], dtype=torch.float64)
    """
    gap = (class_correlation(teacher_class_means) - class_correlation(student_class_means)).abs()
    gap.fill_diagonal_(0.0)
    return gap


def mean_off_diagonal(matrix: Tensor) -> Tensor:
    """Mean of the finite off-diagonal entries of a ``(K, C)`` matrix (NaN when there are none).

    Example:
        >>> mean_off_diagonal(torch.tensor([[0.0, 1.0], [3.0, 0.0]]))
        tensor(2.)
    """
    k = min(matrix.shape)
    mask = torch.ones(matrix.shape, dtype=torch.bool, device=matrix.device)
    mask[torch.arange(k), torch.arange(k)] = False
    off = matrix[mask]
    off = off[torch.isfinite(off)]
    return off.mean() if off.numel() else matrix.new_tensor(float("nan"))


class ClassLogitGap(Metric):
    r"""Per (true class, output class) gap between the student's and the teacher's mean logits (Fig. 9).

    The state is the per-class sums of the student's and the teacher's logits and the per-class counts (two
    ``(C, C)`` and one ``(C,)`` float64 tensors, ``dist_reduce_fx="sum"``; no logits kept), so the value under
    DDP equals one process over the same samples. ``compute()`` returns the matrix selected by ``matrix``:

    - ``"logit_difference"`` (default, the paper's Fig. 9 after DKD): :func:`logit_difference` of the class means;
    - ``"correlation_gap"``: :func:`correlation_gap` of the class means.

    :meth:`class_means` gives the ``(C, C)`` student and teacher class means themselves (NaN rows for classes
    without samples), from which both matrices and :func:`class_correlation` follow.

    Args:
        num_classes: ``C``, the number of classes of the logits.
        matrix: ``"logit_difference"`` or ``"correlation_gap"``.
        validate_args: check shapes, finiteness and target range on every update (reads the values).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = ClassLogitGap(num_classes=2)
        >>> metric.update(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, -1.0], [0.5, 1.0]]),
        ...               torch.tensor([0, 1]))
        >>> metric.compute()
        tensor([[0.0000, 2.0000],
                [0.5000, 0.0000]], dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    student_sum: Tensor
    teacher_sum: Tensor
    count: Tensor

    def __init__(
        self,
        num_classes: int,
        matrix: Literal["logit_difference", "correlation_gap"] = "logit_difference",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise InvalidArgumentError(f"Expected `num_classes` to be an int >= 2, but got {num_classes!r}.")
        if matrix not in GAP_MATRICES:
            raise InvalidArgumentError(
                f"Expected `matrix` to be 'logit_difference' or 'correlation_gap', but got {matrix!r}."
            )
        self.num_classes = num_classes
        self.matrix = matrix
        self.validate_args = validate_args
        c = num_classes
        self.add_state("student_sum", default=torch.zeros(c, c, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("teacher_sum", default=torch.zeros(c, c, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> None:
        """Add a batch: ``(N, C)`` student and teacher logits and ``(N,)`` true classes."""
        check_pair(student_logits, teacher_logits, self.validate_args)
        if student_logits.shape[1] != self.num_classes:
            raise InvalidArgumentError(
                f"Expected the logits to have `num_classes` = {self.num_classes} columns, but got "
                f"{student_logits.shape[1]}."
            )
        targets = check_targets(targets, student_logits, validate_args=self.validate_args).to(self.count.device)
        dtype = self.student_sum.dtype
        self.student_sum.index_add_(0, targets, student_logits.detach().to(dtype))
        self.teacher_sum.index_add_(0, targets, teacher_logits.detach().to(dtype))
        self.count.index_add_(0, targets, torch.ones_like(targets, dtype=dtype))

    def class_means(self) -> tuple[Tensor, Tensor]:
        """``(student, teacher)`` mean logits per true class, ``(C, C)`` float64, NaN rows for unseen classes."""
        present = (self.count > 0).unsqueeze(1)
        denominator = self.count.clamp_min(1).unsqueeze(1)
        nan = self.count.new_tensor(float("nan"))
        return (
            torch.where(present, self.student_sum / denominator, nan),
            torch.where(present, self.teacher_sum / denominator, nan),
        )

    def compute(self) -> Tensor:
        """The selected ``(C, C)`` gap matrix over all samples seen (all NaN before any sample)."""
        student, teacher = self.class_means()
        if self.matrix == "logit_difference":
            return logit_difference(student, teacher)
        return correlation_gap(student, teacher)
