import numpy as np
import pytest
import torch
from scipy import stats

from cmkd_lightning.functional import pearson_corr, rank, spearman_corr


def test_pearson_matches_scipy_row_by_row():
    x, y = torch.randn(2, 7, 13, dtype=torch.float64)
    got = pearson_corr(x, y)
    ref = [stats.pearsonr(a, b).statistic for a, b in zip(x.numpy(), y.numpy())]
    # pearson_corr keeps DIST's 1e-8 in the denominator, scipy has none
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-9)


def test_pearson_invariant_to_positive_affine_maps_per_row():
    x, y = torch.randn(2, 5, 9, dtype=torch.float64)
    scale = torch.rand(5, 1, dtype=torch.float64) * 10 + 0.1
    shift = torch.randn(5, 1, dtype=torch.float64) * 100
    torch.testing.assert_close(pearson_corr(x * scale + shift, y), pearson_corr(x, y), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(pearson_corr(-x, y), -pearson_corr(x, y))


def test_pearson_constant_row_gives_zero_and_finite_gradient():
    x = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    r = pearson_corr(x, y)
    assert r[0] == 0
    r.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_rank_matches_scipy_rankdata_with_ties():
    x = torch.randint(0, 5, (8, 12)).double()
    ref = np.stack([stats.rankdata(row, method="average") for row in x.numpy()])
    np.testing.assert_array_equal(rank(x).numpy(), ref)


def test_exact_spearman_matches_scipy_with_ties():
    x = torch.randint(0, 6, (10, 15)).double()
    y = torch.randn(10, 15, dtype=torch.float64)
    ref = [stats.spearmanr(a, b).statistic for a, b in zip(x.numpy(), y.numpy())]
    np.testing.assert_allclose(spearman_corr(x, y).numpy(), ref, rtol=1e-9, atol=1e-12)


def test_exact_spearman_invariant_under_monotone_maps():
    x, y = torch.randn(2, 6, 20, dtype=torch.float64)
    base = spearman_corr(x, y)
    torch.testing.assert_close(spearman_corr(torch.exp(3 * x), y), base)
    torch.testing.assert_close(spearman_corr(x, y**3 + 2 * y), base)


@pytest.mark.parametrize("backend", ["torch", "torchsort"])
def test_soft_spearman_tends_to_exact_as_strength_goes_to_zero(backend):
    if backend == "torchsort":
        pytest.importorskip("torchsort")
    x, y = torch.randn(2, 16, 50, dtype=torch.float64)
    exact = spearman_corr(x, y)
    errors = [
        (spearman_corr(x, y, regularization_strength=eps, rank_backend=backend) - exact).abs().max().item()
        for eps in (1.0, 0.1, 0.01, 1e-7)
    ]
    assert errors[-1] < 1e-9
    assert errors[0] > errors[2]


def test_soft_spearman_is_differentiable_in_x_only():
    x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    spearman_corr(x, y, regularization_strength=0.1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None


@pytest.mark.parametrize("fn", [pearson_corr, spearman_corr])
def test_shape_mismatch_error(fn):
    with pytest.raises(ValueError, match=r"Expected `x` and `y` to have the same shape, but got \(2, 3\) and \(2, 4\)"):
        fn(torch.randn(2, 3), torch.randn(2, 4))
