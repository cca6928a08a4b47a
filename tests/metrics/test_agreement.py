"""Agreement metrics against scipy/numpy, batch by batch, in a MetricCollection and outside Lightning."""

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import rel_entr, softmax
from torchmetrics import MetricCollection

from cmkd_lightning.metrics import (
    LogitAgreement,
    LogitKLDivergence,
    LogitPearson,
    LogitSpearman,
    TopOneAgreement,
)


def reference(student, teacher):
    s, t = student.double().numpy(), teacher.double().numpy()
    pearson = np.mean([stats.pearsonr(a, b)[0] for a, b in zip(s, t)])
    spearman = np.mean([stats.spearmanr(a, b)[0] for a, b in zip(s, t)])
    top1 = np.mean(s.argmax(1) == t.argmax(1))
    kl = np.mean([rel_entr(softmax(b), softmax(a)).sum() for a, b in zip(s, t)])
    return {"pearson": pearson, "spearman": spearman, "top1_agreement": top1, "kl": kl}


def logits(seed, n=37, c=10, ties=False):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, c, generator=g) * 3
    student = teacher + torch.randn(n, c, generator=g) * 2
    if ties:  # integer logits: many ties, which the exact Spearman averages like scipy
        student, teacher = student.round(), teacher.round()
    return student, teacher


@pytest.mark.parametrize("ties", [False, True])
def test_accumulated_over_batches_equals_scipy_over_all_samples(ties):
    student, teacher = logits(0, ties=ties)
    metric = LogitAgreement()
    for chunk in (slice(0, 5), slice(5, 6), slice(6, 37)):
        metric.update(student[chunk], teacher[chunk])
    expected = reference(student, teacher)
    got = metric.compute()
    assert list(got) == ["pearson", "spearman", "top1_agreement", "kl"]
    for key, value in expected.items():
        assert math.isclose(float(got[key]), value, abs_tol=1e-5), key


def test_single_measure_metrics_in_a_collection_match_the_combined_metric():
    student, teacher = logits(1)
    collection = MetricCollection(
        {
            "pearson": LogitPearson(),
            "spearman": LogitSpearman(),
            "top1_agreement": TopOneAgreement(),
            "kl": LogitKLDivergence(),
        }
    )
    collection.update(student[:20], teacher[:20])
    collection.update(student[20:], teacher[20:])
    combined = LogitAgreement()
    combined.update(student, teacher)
    got, expected = collection.compute(), combined.compute()
    for key in expected:
        assert math.isclose(float(got[key]), float(expected[key]), abs_tol=1e-6), key
    collection.reset()
    assert math.isnan(float(LogitPearson().compute()))


def test_forward_returns_the_batch_value_and_keeps_the_running_mean():
    student, teacher = logits(2, n=8)
    metric = TopOneAgreement()
    batch = metric(student[:4], teacher[:4])
    assert float(batch) == float((student[:4].argmax(1) == teacher[:4].argmax(1)).float().mean())
    metric(student[4:], teacher[4:])
    assert float(metric.compute()) == float((student.argmax(1) == teacher.argmax(1)).float().mean())


def test_state_is_float64_sums_with_sum_reduction():
    metric = LogitAgreement()
    assert metric.sums.dtype == torch.float64 and metric.count.dtype == torch.float64
    assert metric._reductions["sums"] is not None and metric._reductions["count"] is not None
    assert {name: metric._defaults[name].shape for name in ("sums", "count")} == {
        "sums": (4,),
        "count": (),
    }


@pytest.mark.parametrize(
    ("student", "teacher", "error", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), ValueError, "Expected `student_logits` and `teacher_logits` to have"),
        (torch.zeros(3), torch.zeros(3), ValueError, "Expected `student_logits` to be 2-D with shape (N, C)"),
        (torch.full((1, 3), float("nan")), torch.zeros(1, 3), ValueError, "Expected `student_logits` to be finite"),
    ],
)
def test_bad_logits_are_named(student, teacher, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        LogitAgreement().update(student, teacher)
