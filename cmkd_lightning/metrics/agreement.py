"""Teacher–student agreement as torchmetrics metrics: Pearson, exact Spearman, top-1 agreement and KL of the logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cmkd_lightning.functional.correlation import pearson_corr, spearman_corr
from cmkd_lightning.functional.kd import kd_loss
from cmkd_lightning.utilities.validation import check_pair

#: Names of the four agreement measures, in the order :class:`LogitAgreement` returns them.
AGREEMENT_MEASURES = ("pearson", "spearman", "top1_agreement", "kl")


def agreement_per_sample(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""The four agreement measures of every sample, as a ``(4, N)`` float tensor.

    For sample ``i`` with student logits :math:`z^s_i` and teacher logits :math:`z^t_i` (``C`` classes):

    .. math::
        r_i = \operatorname{pearson}(z^s_i, z^t_i),\quad
        \rho_i = \operatorname{pearson}(\operatorname{rank} z^s_i, \operatorname{rank} z^t_i),\quad
        a_i = [\arg\max z^s_i = \arg\max z^t_i],\quad
        \mathrm{KL}_i = \sum_c p^t_{i,c} \log \frac{p^t_{i,c}}{p^s_{i,c}},\ p = \operatorname{softmax}(z)

    (exact ranks with average ties, as ``scipy.stats.spearmanr``; KL(teacher || student) at temperature 1).

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits.

    Returns:
        ``(4, N)`` tensor: rows ``r``, ``rho``, ``a`` and ``KL`` in the order of :data:`AGREEMENT_MEASURES`.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
        >>> agreement_per_sample(z, z).round(decimals=4)
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.],
                [0., 0.]])
    """
    s, t = student_logits.detach().float(), teacher_logits.detach().float()
    return torch.stack(
        [
            pearson_corr(s, t),
            spearman_corr(s, t),
            (s.argmax(dim=-1) == t.argmax(dim=-1)).to(s.dtype),
            kd_loss(s, t, temperature=1.0, reduction="none"),
        ]
    )


class _AgreementSums(Metric):
    """Sums of the per-sample agreement measures and the sample count: the dataset means, exactly, under DDP."""

    is_differentiable = False
    full_state_update = False
    sums: Tensor
    count: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("sums", default=torch.zeros(len(AGREEMENT_MEASURES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Add a batch of ``(N, C)`` student and teacher logits (the teacher's may come from a cache)."""
        check_pair(student_logits, teacher_logits, self.validate_args)
        values = agreement_per_sample(student_logits, teacher_logits)
        self.sums += values.sum(dim=1).to(self.sums.dtype)
        self.count += student_logits.shape[0]

    def _means(self) -> Tensor:
        return (self.sums / self.count).float() if self.count > 0 else torch.full_like(self.sums, float("nan")).float()


class LogitAgreement(_AgreementSums):
    r"""All four teacher–student agreement measures in one metric: mean Pearson, Spearman, top-1 agreement and KL.

    The state is five float64 sums (``dist_reduce_fx="sum"``: memory O(1), no logits kept), so the value over
    processes equals the value over the same samples on one process. ``compute()`` returns a dict keyed by
    :data:`AGREEMENT_MEASURES` (NaN before any sample). See :func:`agreement_per_sample` for the formulas.

    Args:
        validate_args: check the logits' shapes and finiteness on every update (reads the values).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> metric = LogitAgreement()
        >>> metric.update(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 4.0]]))
        >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
        {'pearson': 0.982, 'spearman': 1.0, 'top1_agreement': 1.0, 'kl': 0.0816}
    """

    def compute(self) -> dict[str, Tensor]:
        """Dataset means of the four measures."""
        means = self._means()
        return {name: means[i] for i, name in enumerate(AGREEMENT_MEASURES)}


class _OneMeasure(_AgreementSums):
    _index = 0

    def compute(self) -> Tensor:
        """Dataset mean of the measure (NaN before any sample)."""
        return self._means()[self._index]


class LogitPearson(_OneMeasure):
    r"""Mean per-sample Pearson correlation :math:`r_i` of student and teacher logits over all samples seen.

    Example:
        >>> metric = LogitPearson()
        >>> round(float(metric(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 6.0]]))), 4)
        1.0
    """

    higher_is_better = True
    _index = 0


class LogitSpearman(_OneMeasure):
    r"""Mean per-sample Spearman correlation :math:`\rho_i` (exact ranks, average ties) of the logits.

    Example:
        >>> metric = LogitSpearman()
        >>> round(float(metric(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 5.0, 9.0]]))), 4)
        1.0
    """

    higher_is_better = True
    _index = 1


class TopOneAgreement(_OneMeasure):
    r"""Fraction of samples whose student and teacher top-1 classes agree.

    Example:
        >>> metric = TopOneAgreement()
        >>> metric(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        tensor(0.5000)
    """

    higher_is_better = True
    _index = 2


class LogitKLDivergence(_OneMeasure):
    r"""Mean KL(teacher || student) of the softmax outputs at temperature 1.

    Example:
        >>> metric = LogitKLDivergence()
        >>> metric(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        tensor(0.)
    """

    higher_is_better = False
    _index = 3
