"""Teacher–student metrics as :class:`torchmetrics.Metric` classes, exact under DDP.

Usable in any loop and in a ``MetricCollection``; every state is a sum with ``dist_reduce_fx="sum"``.

- :class:`LogitAgreement`: mean per-sample Pearson, exact Spearman, top-1 agreement and KL in one pass; also one
  each as :class:`LogitPearson`, :class:`LogitSpearman`, :class:`TopOneAgreement`, :class:`LogitKLDivergence`.
- :class:`ClassLogitGap`: the class-by-class gap of Fig. 9 (DKD's ``|mean student - mean teacher logit|``, or the
  gap of the class-correlation matrices).

Example:
    >>> import torch
    >>> from torchmetrics import MetricCollection
    >>> metrics = MetricCollection({"pearson": LogitPearson(), "agree": TopOneAgreement()})
    >>> s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 4.0]])
    >>> {k: round(float(v), 3) for k, v in metrics(s, t).items()}
    {'agree': 1.0, 'pearson': 0.982}
"""

from cmkd_lightning.metrics.agreement import (
    AGREEMENT_MEASURES,
    LogitAgreement,
    LogitKLDivergence,
    LogitPearson,
    LogitSpearman,
    TopOneAgreement,
    agreement_per_sample,
)
from cmkd_lightning.metrics.class_gap import (
    DKD_MAX_DIFF,
    ClassLogitGap,
    class_correlation,
    correlation_gap,
    logit_difference,
    mean_off_diagonal,
)

__all__ = [
    "AGREEMENT_MEASURES",
    "DKD_MAX_DIFF",
    "ClassLogitGap",
    "LogitAgreement",
    "LogitKLDivergence",
    "LogitPearson",
    "LogitSpearman",
    "TopOneAgreement",
    "agreement_per_sample",
    "class_correlation",
    "correlation_gap",
    "logit_difference",
    "mean_off_diagonal",
]
