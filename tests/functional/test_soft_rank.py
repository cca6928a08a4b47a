import importlib
import re
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from cmkd_lightning.functional.soft_rank import reset_affine_warning, soft_rank, soft_rank_affine_rows

# the module, not the function that `cmkd_lightning.functional` re-exports under the same name
soft_rank_module = importlib.import_module("cmkd_lightning.functional.soft_rank")


@pytest.fixture(autouse=True)
def _silence_affine_warning(monkeypatch):
    """Most tests do not care about the once-per-process warning; the warning tests re-arm it themselves.

    monkeypatch puts both flags back as the process had them, whatever a test (or reset_affine_warning) set.
    """
    monkeypatch.setattr(soft_rank_module, "_affine_warned", True)
    monkeypatch.setattr(soft_rank_module, "_torchsort_affine_checked", soft_rank_module._torchsort_affine_checked)


def _torchsort():
    return pytest.importorskip("torchsort")


def _zscore(x):
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


def _inputs(kind, n_rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n, generator=g, dtype=torch.float64)
    if kind == "zscored":
        return _zscore(x)
    if kind == "ties":  # many exact ties on a coarse grid, plus one constant row
        x = torch.round(x * 2) / 2
        x[0] = 0.25
        return x
    if kind == "heavy_tailed":  # Cauchy, clipped so that x / eps stays well inside float64's exact range
        u = torch.rand(n_rows, n, generator=g, dtype=torch.float64)
        return torch.tan(torch.pi * (u - 0.5)).clamp(-50.0, 50.0)
    if kind == "clusters":  # two tight clusters far apart: big blocks inside each, cascades at the edges
        return x * 0.05 + 4.0 * (torch.rand(n_rows, n, generator=g, dtype=torch.float64) > 0.5)
    return x


def _compare_with_torchsort(x, eps, seed=0, atol=1e-10):
    torchsort = _torchsort()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ours = soft_rank(a, eps, backend="torch")
    ref = torchsort.soft_rank(b, regularization="l2", regularization_strength=eps)
    ours.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=atol)


@pytest.mark.parametrize("shape", [(1, 2), (5, 3), (64, 10), (8, 100), (17, 257), (4, 1000)])
@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("kind", ["normal", "zscored", "ties"])
def test_matches_torchsort_float64(shape, eps, kind):
    _compare_with_torchsort(_inputs(kind, *shape, seed=sum(shape)), eps)


@pytest.mark.parametrize("shape", [(64, 100), (48, 1000), (3, 500)])
@pytest.mark.parametrize("eps_times_n", [0.3, 1.0, 2.0, 3.0, 5.0, 8.0, 20.0])
@pytest.mark.parametrize("kind", ["zscored", "heavy_tailed", "clusters"])
def test_matches_torchsort_on_the_eps_scale_of_cmkd(shape, eps_times_n, kind):
    """``eps ~ c / n`` on z-scored rows: the regime where blocks merge in long cascades (several rounds)."""
    _compare_with_torchsort(_inputs(kind, *shape, seed=shape[0] + int(10 * eps_times_n)), eps_times_n / shape[1])


@pytest.mark.parametrize("step", [0.1, 0.3, 0.7])
@pytest.mark.parametrize("n", [10, 200])
def test_matches_torchsort_when_gaps_equal_eps(step, n):
    """Values on a grid of step ``eps``: neighbouring block means are equal up to rounding (about 1e-15).

    torchsort's backward pools neighbours whose means differ by at most 1e-9; the torch backend must too.
    """
    g = torch.Generator().manual_seed(n)
    x = torch.stack([torch.randperm(n, generator=g) for _ in range(12)]).double() * step
    x[::2] += torch.randint(0, 3, (6, n), generator=g).double() * step  # some ties as well
    _compare_with_torchsort(x, step)
    _compare_with_torchsort(x, 2 * step)


@pytest.mark.parametrize("seed", range(4))
def test_matches_torchsort_mixed_single_block_and_split_rows(seed):
    """Rows of very different spread: some are one block, others not (row bookkeeping of the torch backend)."""
    x = _inputs("normal", 40, 300, seed) * torch.logspace(-3, 1, 40, dtype=torch.float64).unsqueeze(1)
    affine = soft_rank_affine_rows(x, 0.05)
    assert 0 < int(affine.sum()) < 40
    _compare_with_torchsort(x, 0.05, seed=seed)


def test_matches_torchsort_float32():
    torchsort = _torchsort()
    x = _zscore(torch.randn(32, 500))
    upstream = torch.randn(32, 500)
    for eps in (0.1 / 500, 1 / 500, 3 / 500, 0.1, 1.0):
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours, ref = soft_rank(a, eps, backend="torch"), torchsort.soft_rank(b, regularization_strength=eps)
        ours.backward(upstream)
        ref.backward(upstream)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4 / eps)


def test_ties_share_a_block_so_tie_breaking_does_not_matter():
    x = _inputs("ties", 16, 40, seed=3)
    eps = 0.3
    ranks = soft_rank(x, eps, backend="torch")
    for row, r in zip(x, ranks, strict=True):
        for value in row.unique():
            tied = r[row == value]
            assert torch.allclose(tied, tied[0].expand_as(tied), rtol=0, atol=1e-12)
    # any reordering of the columns (hence of tied entries in the sort) permutes the ranks the same way
    upstream = torch.randn_like(x)
    a = x.clone().requires_grad_(True)
    (soft_rank(a, eps, backend="torch") * upstream).sum().backward()
    for seed in range(3):
        perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
        b = x[:, perm].clone().requires_grad_(True)
        permuted = soft_rank(b, eps, backend="torch")
        (permuted * upstream[:, perm]).sum().backward()
        torch.testing.assert_close(permuted, ranks[:, perm], rtol=0, atol=1e-12)
        torch.testing.assert_close(b.grad, a.grad[:, perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.05, 0.5, 5.0])
def test_gradcheck(eps):
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: soft_rank(v, eps, backend="torch"), (x,), atol=1e-6)


def test_small_eps_gives_exact_ranks():
    x = torch.randn(20, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ranks = soft_rank(x, 1e-6, backend="torch")
    expected = np.stack([stats.rankdata(row) for row in x.numpy()])
    np.testing.assert_allclose(ranks.numpy(), expected, rtol=0, atol=1e-9)


def test_large_eps_is_an_affine_map_of_the_input():
    x = torch.randn(6, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = 100.0
    ranks = soft_rank(x, eps, backend="torch")
    expected = (x - x.mean(1, keepdim=True)) / eps + (x.shape[1] + 1) / 2
    torch.testing.assert_close(ranks, expected, rtol=0, atol=1e-12)
    assert soft_rank_affine_rows(x, eps).all()
    # so its Pearson correlation with anything is that of the raw input
    other = torch.randn(30, dtype=torch.float64)
    assert np.isclose(stats.pearsonr(ranks[0], other)[0], stats.pearsonr(x[0], other)[0], atol=1e-12)


def test_ranks_sum_to_the_exact_total_and_keep_the_order():
    x = torch.randn(10, 25, dtype=torch.float64)
    for eps in (0.01, 0.3, 3.0):
        ranks = soft_rank(x, eps, backend="torch")
        torch.testing.assert_close(ranks.sum(1), torch.full((10,), 25 * 26 / 2, dtype=torch.float64))
        order = x.argsort(1)
        assert (ranks.gather(1, order).diff(dim=1) >= -1e-12).all()


def test_affine_rows_matches_the_single_block_definition():
    x = torch.randn(200, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = 0.6
    ranks = soft_rank(x, eps, backend="torch")
    # a single block means r = theta - mean(theta) + (n + 1) / 2 exactly
    single = ((ranks - (x - x.mean(1, keepdim=True)) / eps - 6.5).abs() < 1e-9).all(1)
    flags = soft_rank_affine_rows(x, eps)
    assert flags.dtype == torch.bool and flags.shape == (200,)
    assert 0 < int(single.sum()) < 200
    assert torch.equal(flags, single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "torchsort"])
def test_half_precision_round_trip(dtype, backend):
    if backend == "torchsort":
        _torchsort()
    x32 = _zscore(torch.randn(8, 64))
    x = x32.to(dtype).requires_grad_(True)
    ranks = soft_rank(x, 1 / 64, backend=backend)
    assert ranks.dtype == dtype
    reference = soft_rank(x.detach().float(), 1 / 64, backend=backend)  # computed in float32
    torch.testing.assert_close(ranks.float(), reference.to(dtype).float(), rtol=0, atol=0)
    ranks.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_backends_and_auto_agree():
    torchsort = _torchsort()
    x = _zscore(torch.randn(16, 100, dtype=torch.float64))
    assert soft_rank_module._torchsort_supports(x)
    ref = torchsort.soft_rank(x, regularization_strength=0.01)
    for backend in ("auto", "torch", "torchsort"):
        torch.testing.assert_close(soft_rank(x, 0.01, backend=backend), ref, rtol=0, atol=1e-10)


def test_missing_torchsort(monkeypatch):
    monkeypatch.setattr(soft_rank_module, "_torchsort", None)
    monkeypatch.setattr(soft_rank_module, "_torchsort_missing", True)
    x = torch.randn(2, 5)
    with pytest.raises(ImportError, match=re.escape("pip install --no-build-isolation torchsort")):
        soft_rank(x, 0.1, backend="torchsort")
    torch.testing.assert_close(soft_rank(x, 0.1, backend="auto"), soft_rank(x, 0.1, backend="torch"))


def test_empty_and_single_column_inputs():
    assert soft_rank(torch.empty(0, 4), 0.1).shape == (0, 4)
    assert soft_rank(torch.empty(3, 0), 0.1).shape == (3, 0)
    torch.testing.assert_close(soft_rank(torch.randn(3, 1), 0.1, backend="torch"), torch.ones(3, 1))


def test_nan_input_is_a_clear_error():
    x = torch.randn(3, 20, dtype=torch.float64)
    x[0, 4] = float("nan")
    x[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"Expected `values` to be finite, but got 2 NaN/Inf entries"):
        soft_rank(x, 0.1, backend="torch")


def test_nan_row_without_validation_does_not_hang_or_leak_into_other_rows():
    x = torch.randn(3, 20, dtype=torch.float64)
    x[0, 4] = float("nan")
    ranks = soft_rank(x, 0.1, backend="torch", validate_args=False)
    assert torch.isnan(ranks[0]).any()
    torch.testing.assert_close(ranks[1:], soft_rank(x[1:], 0.1, backend="torch"))


@pytest.mark.parametrize("backend", ["torch", "torchsort"])
def test_non_contiguous_input_equals_contiguous(backend):
    base = torch.randn(30, 8, dtype=torch.float64)
    x = base.t()  # (8, 30), non-contiguous
    assert not x.is_contiguous()
    x.requires_grad_(True)
    ref = x.detach().contiguous().requires_grad_(True)
    out, out_ref = soft_rank(x, 0.05, backend=backend), soft_rank(ref, 0.05, backend=backend)
    torch.testing.assert_close(out, out_ref)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (out_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


@pytest.mark.parametrize(
    ("values", "eps", "backend", "error", "match"),
    [
        ([[1.0, 2.0]], 0.1, "torch", TypeError, "Expected `values` to be a torch.Tensor, but got list."),
        (
            torch.ones(2, 3, dtype=torch.int64),
            0.1,
            "torch",
            TypeError,
            "Expected `values` to be a floating-point tensor, but got dtype torch.int64.",
        ),
        (
            torch.ones(3),
            0.1,
            "torch",
            ValueError,
            "Expected `values` to be 2-D with shape (N, n), but got 1-D shape (3,).",
        ),
        (
            torch.ones(2, 3, 4),
            0.1,
            "torch",
            ValueError,
            "Expected `values` to be 2-D with shape (N, n), but got 3-D shape (2, 3, 4).",
        ),
        (torch.ones(2, 3), 0.0, "torch", ValueError, "Expected `regularization_strength` to be a finite number > 0, but got 0.0."),
        (torch.ones(2, 3), -1, "torch", ValueError, "Expected `regularization_strength` to be a finite number > 0, but got -1."),
        (torch.ones(2, 3), float("nan"), "torch", ValueError, "finite number > 0, but got nan."),
        (torch.ones(2, 3), float("inf"), "torch", ValueError, "finite number > 0, but got inf."),
        (
            torch.ones(2, 3),
            0.1,
            "numpy",
            ValueError,
            "Expected `backend` to be one of ('auto', 'torch', 'torchsort'), but got 'numpy'.",
        ),
    ],
)
def test_errors(values, eps, backend, error, match):
    with pytest.raises(error, match=re.escape(match)):
        soft_rank(values, eps, backend=backend)


def test_affine_rows_errors():
    with pytest.raises(ValueError, match=re.escape("Expected `regularization_strength` to be a finite number > 0")):
        soft_rank_affine_rows(torch.ones(2, 3), 0)
    with pytest.raises(ValueError, match=re.escape("but got 1-D shape (3,)")):
        soft_rank_affine_rows(torch.ones(3), 1.0)


@pytest.mark.parametrize("backend", ["torch", "torchsort"])
def test_affine_regime_warns_once(backend):
    if backend == "torchsort":
        _torchsort()
    x = _zscore(torch.randn(8, 50))
    reset_affine_warning()
    with pytest.warns(UserWarning, match=r"Spearman loss built on them equals the Pearson loss") as record:
        soft_rank(x, 1.0, backend=backend)  # eps = 1 on z-scored rows: every row is one block
    assert len(record) == 1
    assert "eps ~ 1/n" in str(record[0].message) and "here 50" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft_rank(x, 1.0, backend=backend)  # once per process


@pytest.mark.parametrize("backend", ["torch", "torchsort"])
def test_no_affine_warning_in_the_normal_regime(backend):
    if backend == "torchsort":
        _torchsort()
    x = _zscore(torch.randn(8, 50))
    x[1:] *= 1e-3  # only row 0 keeps its ranks apart: not *every* row is affine, so no warning either
    reset_affine_warning()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft_rank(_zscore(torch.randn(8, 50)), 1 / 50, backend=backend)
        soft_rank(x, 0.05, backend=backend)
    assert not soft_rank_module._affine_warned


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = _zscore(torch.randn(64, 300, dtype=torch.float64))
    upstream = torch.randn_like(x)
    for eps in (1 / 300, 3 / 300, 1.0):
        a = x.clone().requires_grad_(True)
        c = x.cuda().requires_grad_(True)
        (soft_rank(a, eps, backend="torch") * upstream).sum().backward()
        ranks = soft_rank(c, eps, backend="torch")
        (ranks * upstream.cuda()).sum().backward()
        torch.testing.assert_close(ranks.cpu(), soft_rank(x, eps, backend="torch"), rtol=0, atol=1e-9)
        torch.testing.assert_close(c.grad.cpu(), a.grad, rtol=0, atol=1e-9)
