import numpy as np
import pytest
import torch

from cmkd_lightning.functional import zscore


def test_matches_numpy_unbiased_std_plus_eps():
    x = torch.randn(6, 11, dtype=torch.float64) * 3 + 1
    ref = (x.numpy() - x.numpy().mean(1, keepdims=True)) / (x.numpy().std(1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(zscore(x).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_constant_row_is_finite_with_finite_gradient():
    x = torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]], requires_grad=True)
    z = zscore(x)
    assert torch.equal(z[0].detach(), torch.zeros(3))
    (z * torch.randn_like(z)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gradcheck():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(zscore, (x,))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.ones(3), r"Expected `logits` to be 2-D with shape \(N, C\), but got 1-D shape \(3,\)"),
        (torch.ones(2, 3, dtype=torch.int64), r"floating-point tensor of logits, but got dtype torch.int64"),
        (torch.ones(2, 1), r"at least 2 classes \(C >= 2\), but got C = 1"),
        (torch.tensor([[1.0, float("nan")]]), r"Expected `logits` to be finite, but got 1 NaN/Inf entries"),
    ],
)
def test_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        zscore(bad)
