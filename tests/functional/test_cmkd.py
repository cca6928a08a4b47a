"""CMKD (docs/DESIGN.md, "CMKD, the loss") against a naive per-sample loop, plus the branch assignment of Eq. 16."""

import numpy as np
import pytest
import torch

from cmkd_lightning.functional import cmkd_loss, cmkd_terms, pearson_corr, rank, soft_rank, zscore
from tests.functional import _reference as ref

N, C = 9, 12


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(7)
    zt = torch.randn(N, C, generator=g, dtype=torch.float64) * torch.linspace(0.5, 4, N, dtype=torch.float64)[:, None]
    zs = zt + torch.randn(N, C, generator=g, dtype=torch.float64)
    return zs, zt


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"zscore": False},
        {"spearman": False},
        {"dynamic_weighting": False},
        {"temperature_squared": True},
        {"zscore": False, "spearman": False},
    ],
)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_matches_naive_reference(logits, switches, T):
    """Eq. 9-16 as the paper writes them (``pearson_scale="paper"``); the scale is tested below."""
    zs, zt = logits
    eps_r = 1.0 / C
    ranked = zscore(zs) if switches.get("zscore", True) else zs
    soft = soft_rank(ranked, eps_r).numpy()
    want, want_hard = ref.cmkd(
        zs.numpy(),
        zt.numpy(),
        T,
        4.0,
        1.0,
        soft,
        zscore=switches.get("zscore", True),
        spearman=switches.get("spearman", True),
        dynamic=switches.get("dynamic_weighting", True),
        t2=switches.get("temperature_squared", False),
    )
    with pytest.warns(UserWarning) if switches.get("spearman", True) and not switches.get("zscore", True) else _no_op():
        terms = cmkd_terms(zs, zt, temperature=T, regularization_strength=eps_r, pearson_scale="paper", **switches)
    np.testing.assert_allclose(terms.loss.numpy(), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(terms.hard.numpy(), want_hard)


class _no_op:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_reductions(logits):
    zs, zt = logits
    per_sample = cmkd_loss(zs, zt, reduction="none")
    assert per_sample.shape == (N,)
    torch.testing.assert_close(cmkd_loss(zs, zt), per_sample.mean())
    torch.testing.assert_close(cmkd_loss(zs, zt, reduction="sum"), per_sample.sum())


def test_eq16_branch_assignment_on_sharp_and_flat_teacher_rows():
    """Sharp teacher (low entropy, 'easy') -> gamma*L_P + beta*L_S; flat teacher ('hard') -> beta*L_P + gamma*L_S."""
    sharp = torch.full((C,), 0.0, dtype=torch.float64)
    sharp[3] = 10.0
    flat = torch.linspace(-1.0, 1.0, C, dtype=torch.float64)
    zt = torch.stack([sharp, flat, sharp.roll(4), flat.flip(0)])
    zs = zt + 0.5 * torch.randn_like(zt)
    beta, gamma = 5.0, 0.5
    terms = cmkd_terms(zs, zt, temperature=1.0, beta=beta, gamma=gamma, pearson_scale="paper")
    assert terms.entropy[0] < terms.entropy[1]
    assert terms.hard.tolist() == [False, True, False, True]
    lp, ls = terms.pearson, terms.spearman
    expected = torch.stack(
        [
            gamma * lp[0] + beta * ls[0],
            beta * lp[1] + gamma * ls[1],
            gamma * lp[2] + beta * ls[2],
            beta * lp[3] + gamma * ls[3],
        ]
    )
    torch.testing.assert_close(terms.loss, expected)


def test_batch_of_one_takes_the_hard_branch(logits):
    zs, zt = logits
    terms = cmkd_terms(zs[:1], zt[:1], beta=4.0, gamma=1.0, pearson_scale="paper")
    assert terms.hard.tolist() == [True]
    torch.testing.assert_close(terms.loss, 4.0 * terms.pearson + 1.0 * terms.spearman)


def test_entropy_threshold_override(logits):
    zs, zt = logits
    everyone_easy = cmkd_terms(zs, zt, entropy_threshold=float("inf"), pearson_scale="paper")
    assert not everyone_easy.hard.any()
    torch.testing.assert_close(everyone_easy.loss, 1.0 * everyone_easy.pearson + 4.0 * everyone_easy.spearman)


def test_identical_logits_give_near_zero_loss(logits):
    _, zt = logits
    terms = cmkd_terms(zt.clone(), zt)
    # Only the 1e-8 in Pearson's denominator separates r from 1 (the softened probabilities vary little).
    assert terms.pearson.abs().max() < 1e-5
    # The soft rank at eps = 1/C is close to, not equal to, the exact rank: the Spearman term is small.
    assert terms.spearman.max() < 0.05
    assert cmkd_terms(zt.clone(), zt, regularization_strength=1e-6).spearman.abs().max() < 1e-9


def test_large_strength_makes_spearman_a_pearson_of_zscored_logits(logits):
    """The degenerate regime (docs/DESIGN.md, "Soft-rank strength"): one block per row, the soft rank is affine."""
    zs, zt = logits
    terms = cmkd_terms(zs, zt, regularization_strength=1e3)
    affine_equivalent = 1 - pearson_corr(zscore(zs), rank(zt))
    # equal up to the 1e-8 in Pearson's denominator, whose weight depends on the scale of the inputs
    torch.testing.assert_close(terms.spearman, affine_equivalent, rtol=1e-5, atol=1e-7)


def test_default_strength_is_one_over_c(logits):
    zs, zt = logits
    torch.testing.assert_close(cmkd_loss(zs, zt), cmkd_loss(zs, zt, regularization_strength=1.0 / C))


def test_default_scales_the_pearson_term_by_sqrt_c_and_paper_is_eq16_as_written(logits):
    zs, zt = logits
    paper = cmkd_terms(zs, zt, pearson_scale="paper")
    wp = torch.where(paper.hard, 4.0, 1.0)
    ws = torch.where(paper.hard, 1.0, 4.0)
    torch.testing.assert_close(paper.loss, wp * paper.pearson + ws * paper.spearman)
    for scale, factor in (("sqrt_classes", C**0.5), (3.0, 3.0)):
        got = cmkd_terms(zs, zt, pearson_scale=scale)
        torch.testing.assert_close(got.loss, factor * wp * paper.pearson + ws * paper.spearman)
        torch.testing.assert_close(got.pearson, paper.pearson)  # the logged term stays 1 - r
    assert cmkd_terms(zs, zt).loss.mean() == cmkd_loss(zs, zt)
    # T^2 multiplies the whole scaled sum
    torch.testing.assert_close(
        cmkd_loss(zs, zt, temperature_squared=True), 16.0 * (C**0.5 * wp * paper.pearson + ws * paper.spearman).mean()
    )
    # the scale is what keeps the gradient's size independent of C: ~ sqrt(1 - r^2) / sqrt(C - 1) without it
    g = torch.Generator().manual_seed(0)
    norms = {}
    for c in (10, 1000):
        t = torch.randn(256, c, generator=g, dtype=torch.float64)
        s = (t + torch.randn(256, c, generator=g, dtype=torch.float64)).requires_grad_(True)
        cmkd_terms(s, t, spearman=False, beta=1.0).loss.sum().backward()  # beta * sqrt(C) * L_P
        norms[c] = float(s.grad.norm(dim=1).median())
    assert 0.7 < norms[1000] / norms[10] < 1.4


@pytest.mark.parametrize("bad", ["sqrt", 0.0, -1.0, float("inf"), True])
def test_bad_scale_is_a_clear_error(logits, bad):
    zs, zt = logits
    with pytest.raises(ValueError, match="Expected `pearson_scale` to be one of"):
        cmkd_loss(zs, zt, pearson_scale=bad)


def test_spearman_without_zscore_warns(logits):
    zs, zt = logits
    with pytest.warns(UserWarning, match="un-normalised logits"):
        cmkd_loss(zs, zt, zscore=False)


def test_gradcheck():
    zs = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 6, dtype=torch.float64) * 3
    assert torch.autograd.gradcheck(lambda s: cmkd_loss(s, zt, regularization_strength=0.3), (zs,))


def test_no_gradient_reaches_the_teacher(logits):
    zs, zt = logits
    zs, zt = zs.clone().requires_grad_(True), zt.clone().requires_grad_(True)
    cmkd_loss(zs, zt).backward()
    assert zt.grad is None
    assert zs.grad.abs().sum() > 0


def test_constant_rows_are_finite():
    zs = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    zt = torch.tensor([[2.0, 2.0, 2.0, 2.0], [3.0, 1.0, 0.0, 2.0]])
    loss = cmkd_loss(zs, zt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_run_in_float32(logits, dtype):
    zs, zt = logits
    got = cmkd_loss(zs.to(dtype), zt.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, cmkd_loss(zs.to(dtype).float(), zt.to(dtype).float()))
