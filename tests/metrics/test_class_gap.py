"""ClassLogitGap against a direct numpy computation of the class means, both matrices."""

import re

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection

from cmkd_lightning.metrics import ClassLogitGap, LogitAgreement, class_correlation


def data(seed=0, n=60, c=5):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, c, generator=g) * 2
    student = teacher + torch.randn(n, c, generator=g)
    targets = torch.randint(0, c - 1, (n,), generator=g)  # class c-1 never occurs: its row is NaN
    return student, teacher, targets


def numpy_means(values, targets, c):
    means = np.full((c, c), np.nan)
    for a in range(c):
        rows = values.numpy()[targets.numpy() == a]
        if len(rows):
            means[a] = rows.astype(np.float64).mean(0)
    return means


def test_logit_difference_equals_numpy():
    student, teacher, targets = data()
    metric = ClassLogitGap(num_classes=5)
    metric.update(student[:25], teacher[:25], targets[:25])
    metric.update(student[25:], teacher[25:], targets[25:])
    expected = np.abs(numpy_means(student, targets, 5) - numpy_means(teacher, targets, 5))
    np.fill_diagonal(expected, 0.0)
    got = metric.compute().numpy()
    assert np.isnan(got[4, :4]).all()
    np.testing.assert_allclose(got[:4], expected[:4], atol=1e-12)


def test_correlation_gap_equals_numpy_corrcoef():
    student, teacher, targets = data(1)
    metric = ClassLogitGap(num_classes=5, matrix="correlation_gap")
    metric.update(student, teacher, targets)
    s, t = numpy_means(student, targets, 5)[:4], numpy_means(teacher, targets, 5)[:4]
    expected = np.abs(np.corrcoef(t) - np.corrcoef(s))
    np.fill_diagonal(expected, 0.0)
    got = metric.compute().numpy()
    np.testing.assert_allclose(got[:4, :4], expected, atol=1e-12)
    assert np.isnan(got[4, :4]).all()
    np.testing.assert_allclose(class_correlation(torch.from_numpy(t)).numpy(), np.corrcoef(t), atol=1e-12)


def test_class_means_and_collection_with_agreement_metric():
    student, teacher, targets = data(2)
    gap = ClassLogitGap(num_classes=5)
    gap.update(student, teacher, targets)
    s_means, t_means = gap.class_means()
    np.testing.assert_allclose(s_means.numpy()[:4], numpy_means(student, targets, 5)[:4], atol=1e-12)
    np.testing.assert_allclose(t_means.numpy()[:4], numpy_means(teacher, targets, 5)[:4], atol=1e-12)
    collection = MetricCollection({"agreement": LogitAgreement()})
    collection.update(student, teacher)
    assert list(collection.compute()) == ["pearson", "spearman", "top1_agreement", "kl"]  # dict results unnested


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "Expected `num_classes` to be an int >= 2, but got 1."),
        ({"num_classes": 3, "matrix": "gap"}, "Expected `matrix` to be 'logit_difference' or 'correlation_gap'"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        ClassLogitGap(**kwargs)


def test_update_errors_name_the_argument():
    metric = ClassLogitGap(num_classes=3)
    with pytest.raises(
        ValueError, match=re.escape("Expected the logits to have `num_classes` = 3 columns, but got 4.")
    ):
        metric.update(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("Expected `targets` to be class indices in [0, 3)")):
        metric.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3]))
