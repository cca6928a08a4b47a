"""The NumPy kernel of the fused CMKD path (``_cmkd_numpy.py``) piece by piece, against references."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from cmkd_lightning.functional import _cmkd_numpy as K
from cmkd_lightning.functional import rank
from cmkd_lightning.functional.zscore import _zscore

HAS_TORCHSORT = importlib.util.find_spec("torchsort") is not None


def _pav_reference(y: np.ndarray) -> np.ndarray:
    """Plain pool-adjacent-violators, one row at a time: the non-increasing least-squares fit (ties pool)."""
    out = np.empty_like(y)
    for i, row in enumerate(y):
        sums: list[float] = []
        counts: list[int] = []
        for v in row:
            sums.append(float(v))
            counts.append(1)
            while len(sums) > 1 and sums[-1] / counts[-1] >= sums[-2] / counts[-2]:
                s, c = sums.pop(), counts.pop()
                sums[-1] += s
                counts[-1] += c
        out[i] = np.repeat([s / c for s, c in zip(sums, counts)], counts)
    return out


def _problems(seed: int) -> list[np.ndarray]:
    """Isotonic inputs of every shape the soft rank meets, and adversarial ones (long cascades, ties)."""
    rng = np.random.default_rng(seed)
    out = []
    for n, c in [(1, 2), (3, 5), (7, 40), (2, 300)]:
        out.append(rng.normal(size=(n, c)))  # random: many short blocks
        out.append(rng.integers(-3, 3, size=(n, c)).astype(float))  # ties
        out.append(np.cumsum(rng.normal(size=(n, c)), axis=1))  # random walk: long blocks
        out.append(np.arange(c, dtype=float)[None].repeat(n, 0) + rng.normal(size=(n, c)) * 0.3)  # one block
        out.append(-np.arange(c, dtype=float)[None].repeat(n, 0))  # already decreasing: no pooling
    # the soft rank's own problem: 1..C minus sorted z-scored values over eps
    for n, c in [(64, 100), (40, 1000)]:
        s = np.sort(rng.normal(size=(n, c)), axis=1) * c
        out.append(np.arange(1, c + 1, dtype=float) - s)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_pav_equals_plain_pool_adjacent_violators(seed):
    for y in _problems(seed):
        blocks = K.PAVBlocks(y)
        np.testing.assert_allclose(blocks.solution(y.shape), _pav_reference(y), rtol=1e-12, atol=1e-9)


@pytest.mark.skipif(not HAS_TORCHSORT, reason="torchsort is not installed")
def test_pav_equals_torchsort_kernel_forward_and_backward():
    ops = pytest.importorskip("torchsort.ops")
    rng = np.random.default_rng(3)
    for y in _problems(2):
        sol = ops.isotonic_l2["cpu"](torch.from_numpy(y.copy()))
        blocks = K.PAVBlocks(y)
        np.testing.assert_allclose(blocks.solution(y.shape), sol.numpy(), rtol=1e-12, atol=1e-9)
        g = rng.normal(size=y.shape)
        ref = ops.isotonic_l2_backward["cpu"](torch.from_numpy(y), sol, torch.from_numpy(g)).numpy()
        np.testing.assert_allclose(blocks.means(g), ref, rtol=1e-12, atol=1e-12)


def test_pav_block_means_average_over_blocks():
    y = np.array([[3.0, 1.0, 2.0, 0.0, 5.0], [0.0, 1.0, 2.0, -1.0, -4.0]])
    blocks = K.PAVBlocks(y)
    # row 0: (1, 2) pool to 1.5, then (0, 5) to 2.5 > 1.5, so 1, 2, 0, 5 pool to 2; row 1: 0, 1, 2 pool to 1
    np.testing.assert_allclose(blocks.solution(y.shape), [[3.0, 2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, -1.0, -4.0]])
    g = np.array([[1.0, 2.0, 4.0, 6.0, 8.0], [3.0, 0.0, 0.0, 5.0, 7.0]])
    np.testing.assert_allclose(blocks.means(g), [[1.0, 5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 5.0, 7.0]])


def test_pav_float32_matches_float64_within_float32_rounding():
    y = _problems(4)[-1]
    a = K.PAVBlocks(y.astype(np.float32)).solution(y.shape)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, K.PAVBlocks(y).solution(y.shape), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("size", "expected"), [((8, 10), "torchsort"), ((64, 1000), "numpy")])
def test_isotonic_uses_torchsort_only_for_small_problems(size, expected):
    if not HAS_TORCHSORT:
        pytest.skip("torchsort is not installed")
    y = np.random.default_rng(0).normal(size=size)
    iso = K.Isotonic(y, "torchsort")
    assert (iso.blocks is None) == (expected == "torchsort")
    assert isinstance(K.Isotonic(y, "torch").blocks, K.PAVBlocks)  # the torch backend never needs torchsort


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zscore_equals_the_general_zscore_on_every_kind_of_row(dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 12)) * 3
    z[1] = 2.5  # constant
    z[2] = 1e5 + np.arange(12) * 1e-12  # spread far below the float resolution of its size
    z[3, :2] = [3e38, -3e38] if dtype == np.float32 else [1e300, -1e300]  # squares overflow
    z[4] = 0.0
    z[5] *= 1e-30  # tiny but not constant
    z = z.astype(dtype)
    with np.errstate(all="ignore"):  # the overflowing row overflows before it is redone (callers silence this)
        out = K.zscore(z.copy(), 1e-7)
    ref = _zscore(torch.from_numpy(z)).numpy()
    assert np.isfinite(out.h).all()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.h, ref, rtol=tol, atol=tol)
    # live: the standard deviation of z / max(max |z|, 1) is above the general z-score's clamp
    scaled = z.astype(np.float64) / np.maximum(np.abs(z).max(axis=1, keepdims=True), 1.0)
    np.testing.assert_array_equal(out.live[:, 0], scaled.std(axis=1, ddof=1) > K.MIN_STD)
    assert out.live[:, 0].tolist()[1:3] == [False, False]


def test_softmax_without_the_shift_equals_torch():
    h = K.zscore(np.random.default_rng(1).normal(size=(6, 50)), 1e-7).h
    for temperature in (0.05, 1.0, 4.0):  # 0.05: sqrt(49) / 0.05 is past the no-shift bound, so it shifts
        ref = torch.softmax(torch.from_numpy(h) / temperature, dim=1).numpy()
        np.testing.assert_allclose(K.softmax(h, 1 / temperature, 7.0), ref, rtol=1e-12, atol=1e-15)


def test_entropies_equal_torch():
    a = np.random.default_rng(2).normal(size=(5, 30)) * 4
    a[0, 0] = -1e4  # a class with probability 0
    log_p = torch.log_softmax(torch.from_numpy(a), dim=1)
    ref = -(log_p.exp() * log_p).sum(1).numpy()
    np.testing.assert_allclose(K.entropy(a), ref, rtol=1e-12)
    p, h = K.softmax_entropy(a, 1.0)
    np.testing.assert_allclose(h, ref, rtol=1e-12)
    np.testing.assert_allclose(p, log_p.exp().numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_ranks_equal_rank(dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, size=(20, 30)).astype(dtype)  # many ties
    x[0] = rng.normal(size=30)  # none
    x[1, :3] = [0.0, -0.0, 0.0]  # signed zeros are one value
    x[2] = 7.0  # all tied
    np.testing.assert_array_equal(K.exact_ranks(x), rank(torch.from_numpy(x)).numpy())
