"""Every functional loss rejects bad input with a message naming the argument, expected and received."""

import pytest
import torch

from cmkd_lightning.functional import cmkd_loss, dist_loss, dkd_loss, kd_loss, lskd_loss, nkd_loss

Y = torch.tensor([0, 1])


def _t(fn):
    return lambda s, t, **kw: fn(s, t, Y, **kw)


LOSSES = {
    "kd": kd_loss,
    "lskd": lskd_loss,
    "dist": dist_loss,
    "cmkd": cmkd_loss,
    "dkd": _t(dkd_loss),
    "nkd": _t(nkd_loss),
}
GOOD = torch.randn(2, 5)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize(
    ("student", "teacher", "exc", "match"),
    [
        (torch.randn(2, 5), torch.randn(2, 4), ValueError,
         r"Expected `student_logits` and `teacher_logits` to have the same shape, but got \(2, 5\) and \(2, 4\)\."),
        (torch.randn(2, 5, 1), torch.randn(2, 5, 1), ValueError,
         r"Expected `student_logits` to be 2-D with shape \(N, C\), but got 3-D shape \(2, 5, 1\)\."),
        (torch.ones(2, 5, dtype=torch.long), GOOD, TypeError,
         r"Expected `student_logits` to be a floating-point tensor of logits, but got dtype torch.int64\."),
        (GOOD, torch.ones(2, 5, dtype=torch.bool), TypeError,
         r"Expected `teacher_logits` to be a floating-point tensor of logits, but got dtype torch.bool\."),
        (torch.randn(2, 1), torch.randn(2, 1), ValueError,
         r"Expected `student_logits` to have at least 2 classes \(C >= 2\), but got C = 1\."),
        (torch.tensor([[0.0, float("nan"), 1, 2, 3]] * 2), GOOD, ValueError,
         r"Expected `student_logits` to be finite, but got 2 NaN/Inf entries\."),
        (GOOD, torch.tensor([[0.0, float("inf"), 1, 2, 3], [0.0] * 5]), ValueError,
         r"Expected `teacher_logits` to be finite, but got 1 NaN/Inf entries\."),
        ([[1.0, 2.0]], GOOD, TypeError, r"Expected `student_logits` to be a torch.Tensor, but got list\."),
    ],
)
def test_bad_logits(name, student, teacher, exc, match):
    with pytest.raises(exc, match=match):
        LOSSES[name](student, teacher)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_temperature(name):
    with pytest.raises(ValueError, match=r"Expected `temperature` to be a finite number > 0, but got -1\.0\."):
        LOSSES[name](GOOD, GOOD, temperature=-1.0)


@pytest.mark.parametrize("name", ["kd", "lskd", "cmkd", "dkd", "nkd"])
def test_bad_reduction(name):
    with pytest.raises(ValueError, match=r"Expected `reduction` to be one of \('mean', 'sum', 'none'\), but got 'avg'\."):
        LOSSES[name](GOOD, GOOD, reduction="avg")


@pytest.mark.parametrize("fn", [dkd_loss, nkd_loss])
@pytest.mark.parametrize(
    ("targets", "exc", "match"),
    [
        (None, ValueError, r"This loss needs `targets` \(class indices of shape \(N,\)\), but got None\."),
        (torch.tensor([0.0, 1.0]), TypeError,
         r"Expected `targets` to be an integer tensor of class indices, but got dtype torch.float32\."),
        (torch.tensor([True, False]), TypeError, r"but got dtype torch.bool\."),
        (torch.tensor([[0], [1]]), ValueError, r"Expected `targets` to have shape \(2,\), but got \(2, 1\)\."),
        (torch.tensor([0, 5]), ValueError, r"Expected `targets` to be class indices in \[0, 5\), but got values in \[0, 5\]\."),
        (torch.tensor([-1, 2]), ValueError, r"class indices in \[0, 5\), but got values in \[-1, 2\]\."),
    ],
)
def test_bad_targets(fn, targets, exc, match):
    with pytest.raises(exc, match=match):
        fn(GOOD, GOOD, targets)
