"""The baseline losses against naive per-sample references (docs/DESIGN.md, "Baselines")."""

import numpy as np
import pytest
import torch

from cmkd_lightning.functional import dist_loss, dkd_loss, kd_loss, lskd_loss, nkd_loss, nkd_terms
from tests.functional import _reference as ref

N, C = 7, 10


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, C, (N,), generator=g)
    return zs, zt, y


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_reference(logits, T):
    zs, zt, _ = logits
    got = kd_loss(zs, zt, temperature=T, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.kd(zs.numpy(), zt.numpy(), T), rtol=1e-10)
    torch.testing.assert_close(kd_loss(zs, zt, temperature=T), got.mean())
    torch.testing.assert_close(kd_loss(zs, zt, temperature=T, reduction="sum"), got.sum())


def test_lskd_matches_reference_and_is_scale_invariant(logits):
    zs, zt, _ = logits
    got = lskd_loss(zs, zt, temperature=2.0, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.lskd(zs.numpy(), zt.numpy(), 2.0), rtol=1e-9)
    torch.testing.assert_close(lskd_loss(zs * 5 + 3, zt, reduction="none"), got, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_reference(logits, alpha, beta, T):
    zs, zt, y = logits
    got = dkd_loss(zs, zt, y, alpha=alpha, beta=beta, temperature=T, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.dkd(zs.numpy(), zt.numpy(), y.numpy(), alpha, beta, T), rtol=1e-8)


@pytest.mark.parametrize(("T", "gamma"), [(1.0, 1.5), (2.0, 1.0)])
def test_nkd_matches_reference(logits, T, gamma):
    zs, zt, y = logits
    got = nkd_loss(zs, zt, y, temperature=T, gamma=gamma, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.nkd(zs.numpy(), zt.numpy(), y.numpy(), T, gamma), rtol=1e-10)


@pytest.mark.parametrize(("T", "beta", "gamma"), [(4.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_dist_matches_reference(logits, T, beta, gamma):
    zs, zt, _ = logits
    got = dist_loss(zs, zt, temperature=T, beta=beta, gamma=gamma)
    np.testing.assert_allclose(float(got), ref.dist(zs.numpy(), zt.numpy(), T, beta, gamma), rtol=1e-9)


def test_dist_batch_of_one_drops_the_intra_class_term(logits):
    zs, zt, _ = logits
    got = dist_loss(zs[:1], zt[:1], temperature=4.0)
    inter_only = 16.0 * (1 - ref.pearson(ref.softmax(zs[0].numpy() / 4), ref.softmax(zt[0].numpy() / 4)))
    np.testing.assert_allclose(float(got), inter_only, rtol=1e-9)


def test_dist_rejects_per_sample_reduction(logits):
    zs, zt, _ = logits
    with pytest.raises(ValueError, match=r"Expected `reduction` to be 'mean' for DIST .* but got 'none'"):
        dist_loss(zs, zt, reduction="none")


@pytest.mark.parametrize(("fn", "tol"), [(kd_loss, 1e-12), (lskd_loss, 1e-12), (dist_loss, 1e-4)])
def test_zero_loss_for_identical_logits(fn, tol, logits):
    zs, _, _ = logits
    # DIST: only the 1e-8 in Pearson's denominator (times tau^2 = 16) keeps it from exactly 0
    assert abs(float(fn(zs, zs.clone()))) < tol


def test_dkd_zero_for_identical_logits(logits):
    zs, _, y = logits
    assert abs(float(dkd_loss(zs, zs.clone(), y))) < 1e-12


def test_nkd_non_target_term_is_minimal_at_identical_logits(logits):
    """NKD's non-target part is a cross-entropy: minimal (= the teacher's entropy) when student == teacher."""
    _, zt, y = logits
    at_teacher = nkd_terms(zt.clone(), zt, y)[1]
    perturbed = nkd_terms(zt + 0.3 * torch.randn_like(zt), zt, y)[1]
    assert (perturbed > at_teacher).all()


def _with_targets(fn):
    return lambda s, t: fn(s, t, torch.tensor([0, 2, 1]))


@pytest.mark.parametrize("fn", [kd_loss, lskd_loss, dist_loss, _with_targets(dkd_loss), _with_targets(nkd_loss)])
def test_gradcheck(fn):
    zs = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: fn(s, zt), (zs,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [kd_loss, lskd_loss, dist_loss])
def test_half_inputs_are_computed_in_float32(fn, dtype, logits):
    zs, zt, _ = logits
    got = fn(zs.to(dtype), zt.to(dtype))
    assert got.dtype == torch.float32
    want = fn(zs.to(dtype).float(), zt.to(dtype).float())
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fn", [kd_loss, lskd_loss, dist_loss])
def test_constant_rows_give_finite_loss_and_gradients(fn):
    zs = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], requires_grad=True)
    zt = torch.tensor([[2.0, 2.0, 2.0], [1.0, 0.0, 1.0]])
    loss = fn(zs, zt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
