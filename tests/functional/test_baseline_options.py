"""The baselines' own options: logit standardisation on KD and DKD, NKD's soft targets, any integer target dtype.

The references transcribe the authors' code: the logit-standardisation repository z-scores with
``(z - mean) / (1e-7 + std)`` (unbiased std) and then runs its KD / DKD unchanged (DKD masks the target column by
``-1000``); NKD's code reads an ``(N, C)`` soft target as its ``torch.max`` class.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkd_lightning.functional import dkd_loss, kd_loss, lskd_loss, nkd_loss, nkd_terms
from tests.functional import _reference as ref

N, C = 7, 10
INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(5)
    zs = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(N, C, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, C, (N,), generator=g)
    return zs, zt, y


def _authors_normalize(z):
    return (z - z.mean(dim=-1, keepdim=True)) / (1e-7 + z.std(dim=-1, keepdim=True))


def _authors_kd(zs, zt, T, logit_stand):
    if logit_stand:
        zs, zt = _authors_normalize(zs), _authors_normalize(zt)
    log_ps = F.log_softmax(zs / T, dim=1)
    pt = F.softmax(zt / T, dim=1)
    return F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * T**2


def _authors_dkd(zs, zt, y, alpha, beta, T, logit_stand):
    if logit_stand:
        zs, zt = _authors_normalize(zs), _authors_normalize(zt)
    gt = torch.zeros_like(zs).scatter_(1, y.reshape(-1, 1), 1).bool()
    ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
    ps = torch.cat([(ps * gt).sum(1, keepdim=True), (ps * ~gt).sum(1, keepdim=True)], dim=1)
    pt = torch.cat([(pt * gt).sum(1, keepdim=True), (pt * ~gt).sum(1, keepdim=True)], dim=1)
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T**2 / y.shape[0]
    pt2 = F.softmax(zt / T - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(zs / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * T**2 / y.shape[0]
    return alpha * tckd + beta * nckd


def _authors_nkd(zs, zt, gt_label, T, gamma):
    label = torch.max(gt_label, dim=1, keepdim=True)[1] if gt_label.ndim > 1 else gt_label.view(-1, 1)
    n = zs.shape[0]
    s_t = torch.gather(F.log_softmax(zs, dim=1), 1, label)
    t_t = torch.gather(F.softmax(zt, dim=1), 1, label)
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(zs).scatter_(1, label, 0).bool()
    zs, zt = zs[mask].reshape(n, -1), zt[mask].reshape(n, -1)
    loss_non = (F.softmax(zt / T, dim=1) * F.log_softmax(zs / T, dim=1)).sum(dim=1).mean()
    return loss_t - gamma * T**2 * loss_non


# ---------------------------------------------------------------------------------------------------------------
# logit standardisation


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_with_logit_standardization_is_lskd_and_the_authors_code(logits, T):
    zs, zt, _ = logits
    got = kd_loss(zs, zt, temperature=T, logit_standardization=True)
    torch.testing.assert_close(got, lskd_loss(zs, zt, temperature=T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _authors_kd(zs, zt, T, True), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        kd_loss(zs, zt, temperature=T, logit_standardization=True, reduction="none").numpy(),
        ref.lskd(zs.numpy(), zt.numpy(), T),
        rtol=1e-9,
    )


def test_kd_without_logit_standardization_is_unchanged(logits):
    zs, zt, _ = logits
    torch.testing.assert_close(kd_loss(zs, zt, logit_standardization=False), _authors_kd(zs, zt, 4.0, False))


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (9.0, 72.0, 2.0), (0.5, 2.0, 1.0)])
def test_dkd_with_logit_standardization_equals_the_authors_code(logits, alpha, beta, T):
    zs, zt, y = logits
    got = dkd_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=T, logit_standardization=True)
    torch.testing.assert_close(got, _authors_dkd(zs, zt, y, alpha, beta, T, True), rtol=1e-10, atol=1e-12)
    # = zscore, then plain DKD (the naive reference written from the formulas)
    zsn = np.stack([ref.zscore_row(r) for r in zs.numpy()])
    ztn = np.stack([ref.zscore_row(r) for r in zt.numpy()])
    np.testing.assert_allclose(
        dkd_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=T, logit_standardization=True, reduction="none"),
        ref.dkd(zsn, ztn, y.numpy(), alpha, beta, T),
        rtol=1e-8,
    )
    torch.testing.assert_close(
        dkd_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=T), _authors_dkd(zs, zt, y, alpha, beta, T, False)
    )


def test_logit_standardization_makes_kd_and_dkd_scale_and_shift_invariant(logits):
    zs, zt, y = logits
    for fn in (
        lambda s, t: kd_loss(s, t, logit_standardization=True),
        lambda s, t: dkd_loss(s, t, y, logit_standardization=True),
    ):
        torch.testing.assert_close(fn(zs * 7 - 3, zt * 0.2 + 5), fn(zs, zt), rtol=1e-6, atol=1e-9)


def test_logit_standardization_gradcheck(logits):
    zs, zt, y = logits
    zs = zs[:3, :5].clone().requires_grad_(True)
    zt, y = zt[:3, :5], y[:3] % 5
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, zt, logit_standardization=True), (zs,))
    assert torch.autograd.gradcheck(lambda s: dkd_loss(s, zt, y, logit_standardization=True), (zs,))


@pytest.mark.parametrize("fn", ["kd", "dkd"])
def test_logit_standardization_eps_is_checked(logits, fn):
    zs, zt, y = logits
    call = (lambda **k: kd_loss(zs, zt, **k)) if fn == "kd" else (lambda **k: dkd_loss(zs, zt, y, **k))
    with pytest.raises(ValueError, match=r"Expected `eps` to be a finite number > 0, but got 0\.0\."):
        call(logit_standardization=True, eps=0.0)
    call(logit_standardization=False, eps=0.0)  # eps unused without standardisation


# ---------------------------------------------------------------------------------------------------------------
# integer target dtypes


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
@pytest.mark.parametrize("validate_args", [True, False])
def test_dkd_and_nkd_accept_any_integer_target_dtype(logits, dtype, validate_args):
    zs, zt, y = logits
    yd = y.to(dtype)
    for fn in (dkd_loss, nkd_loss):
        got = fn(zs, zt, yd, reduction="none", validate_args=validate_args)
        torch.testing.assert_close(got, fn(zs, zt, y, reduction="none"))


def test_integer_targets_out_of_range_are_still_rejected(logits):
    zs, zt, y = logits
    bad = y.to(torch.int32).clone()
    bad[0] = C
    for fn in (dkd_loss, nkd_loss):
        with pytest.raises(ValueError, match=r"Expected `targets` to be class indices in \[0, 10\)"):
            fn(zs, zt, bad)
        with pytest.raises(TypeError, match=r"integer tensor of class indices, but got dtype torch.bool"):
            fn(zs, zt, torch.zeros(N, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# NKD soft targets


def test_nkd_one_hot_targets_equal_class_indices(logits):
    zs, zt, y = logits
    one_hot = F.one_hot(y, C).double()
    torch.testing.assert_close(nkd_loss(zs, zt, one_hot), nkd_loss(zs, zt, y))
    torch.testing.assert_close(nkd_loss(zs, zt, one_hot.float()), nkd_loss(zs, zt, y))


@pytest.mark.parametrize(("T", "gamma"), [(1.0, 1.5), (2.0, 1.0)])
def test_nkd_mixup_targets_equal_the_authors_code(logits, T, gamma):
    zs, zt, y = logits
    g = torch.Generator().manual_seed(9)
    lam = 0.3
    mixed = lam * F.one_hot(y, C).double() + (1 - lam) * F.one_hot(y[torch.randperm(N, generator=g)], C).double()
    got = nkd_loss(zs, zt, mixed, temperature=T, gamma=gamma)
    torch.testing.assert_close(got, _authors_nkd(zs, zt, mixed, T, gamma), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, nkd_loss(zs, zt, mixed.argmax(1), temperature=T, gamma=gamma))
    target, non_target = nkd_terms(zs, zt, mixed, temperature=T)
    assert target.shape == non_target.shape == (N,)


def test_nkd_soft_targets_errors(logits):
    zs, zt, y = logits
    with pytest.raises(
        ValueError, match=r"Expected soft `targets` to have the shape of the logits \(7, 10\), but got \(7, 9\)\."
    ):
        nkd_loss(zs, zt, torch.rand(N, C - 1, dtype=torch.float64))
    bad = F.one_hot(y, C).double()
    bad[0, 0] = -0.5
    with pytest.raises(ValueError, match=r"Expected soft `targets` to be finite and >= 0"):
        nkd_loss(zs, zt, bad)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Expected soft `targets` to be finite and >= 0"):
        nkd_loss(zs, zt, bad)
    nkd_loss(zs, zt, F.one_hot(y, C).double().neg(), validate_args=False)  # not checked without validate_args
    with pytest.raises(TypeError, match=r"integer tensor of class indices, but got dtype torch.float64"):
        nkd_loss(zs, zt, y.double())  # (N,) floats are neither class indices nor soft targets
