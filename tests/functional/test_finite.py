"""Finite in, finite out (or a clear error): extreme and non-contiguous logits for every functional loss."""

import warnings

import pytest
import torch

from cmkd_lightning.functional import (
    cmkd_loss,
    dist_loss,
    dkd_loss,
    kd_loss,
    lskd_loss,
    nkd_loss,
    soft_rank,
    zscore,
)

Y = torch.tensor([0, 1, 2, 3])
LOSSES = {
    "kd": lambda s, t, **kw: kd_loss(s, t, **kw),
    "dkd": lambda s, t, **kw: dkd_loss(s, t, Y[: s.shape[0]], **kw),
    "nkd": lambda s, t, **kw: nkd_loss(s, t, Y[: s.shape[0]], **kw),
    "dist": lambda s, t, **kw: dist_loss(s, t, **kw),
    "lskd": lambda s, t, **kw: lskd_loss(s, t, **kw),
    "cmkd": lambda s, t, **kw: cmkd_loss(s, t, **kw),
}
BIG = torch.tensor([[3e38, -3e38, 0.0, 1.0], [0.0, 3e38, -3e38, 2.0], [-3e38, 1.0, 3e38, 0.0]])
# scale-invariant losses: finite values and gradients for any finite logits
SCALE_SAFE = ("lskd", "cmkd", "dist")


def _value_and_grad(name, student, teacher, **kw):
    s = student.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = LOSSES[name](s, teacher, **kw)
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("name", LOSSES)
def test_non_contiguous_logits_equal_contiguous(name):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 4, generator=g).t()  # (4, 6), non-contiguous
    t = torch.randn(6, 4, generator=g).t()
    assert not s.is_contiguous() and not t.is_contiguous()
    value, grad = _value_and_grad(name, s, t)
    ref_value, ref_grad = _value_and_grad(name, s.contiguous(), t.contiguous())
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", LOSSES)
def test_identical_extreme_logits_give_finite_values_and_gradients(name):
    value, grad = _value_and_grad(name, BIG, BIG)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (value, grad)
    if name in ("kd", "dkd", "lskd"):
        assert float(value) == pytest.approx(0.0, abs=1e-5)  # same logits, no divergence (not 0 * inf = NaN)


@pytest.mark.parametrize("name", SCALE_SAFE)
@pytest.mark.parametrize("teacher", ["flipped", "normal"])
def test_scale_invariant_losses_stay_finite_on_extreme_logits(name, teacher):
    t = BIG.flip(1) if teacher == "flipped" else torch.randn(3, 4)
    value, grad = _value_and_grad(name, BIG, t)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (value, grad)


@pytest.mark.parametrize("name", ["lskd", "cmkd"])
def test_zscored_losses_match_their_value_on_rescaled_logits(name):
    """z-scoring is scale-free: +-3e38 logits give the loss of the same logits divided by 1e37."""
    t = torch.randn(3, 4, dtype=torch.float64)
    big = BIG.double()
    value, _ = _value_and_grad(name, big, t)
    small, _ = _value_and_grad(name, big / 1e37, t)
    torch.testing.assert_close(value, small, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["kd", "dkd", "nkd"])
def test_kl_losses_whose_true_value_overflows_raise_a_clear_error(name):
    with pytest.raises(ValueError, match=rf"Expected `{name}_loss` to be finite for finite logits, but it overflowed"):
        LOSSES[name](BIG, BIG.flip(1))


@pytest.mark.parametrize("name", ["kd", "dkd", "nkd"])
def test_kl_losses_on_extreme_logits_are_exact_in_float64(name):
    value, grad = _value_and_grad(name, BIG.double(), BIG.flip(1).double())
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_lskd_does_not_report_nan_for_finite_input():
    # it used to z-score in a way that overflowed, then blamed the (finite) input for NaN/Inf entries
    value, grad = _value_and_grad("lskd", BIG, torch.randn(3, 4))
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_zscore_of_extreme_logits_is_the_zscore_of_the_rescaled_row():
    torch.testing.assert_close(zscore(BIG.double()), zscore(BIG.double() / 1e38, eps=1e-45), rtol=1e-9, atol=1e-9)


def test_soft_rank_of_nan_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Expected `values` to be finite, but got 1 NaN/Inf entries"):
        soft_rank(torch.tensor([[1.0, float("nan"), 2.0]]), 0.1, backend="torch")


@pytest.mark.parametrize("name", LOSSES)
def test_validate_args_false_skips_the_value_checks(name):
    bad = torch.tensor([[0.0, float("nan"), 1.0, 2.0]] * 4)
    with pytest.raises(ValueError, match="to be finite"):
        LOSSES[name](bad, torch.randn(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LOSSES[name](bad, torch.randn(4, 4), validate_args=False)  # no read of the values: no error


@pytest.mark.parametrize("fn", [dkd_loss, nkd_loss])
def test_validate_args_false_keeps_the_free_shape_checks(fn):
    with pytest.raises(ValueError, match=r"Expected `targets` to have shape \(2,\)"):
        fn(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([[0], [1]]), validate_args=False)
