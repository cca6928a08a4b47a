"""Per-row temperatures at a target perplexity, and CMKD's Pearson term with them, against scipy root finding."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from cmkd_lightning.functional import cmkd_terms, soft_rank, zscore
from cmkd_lightning.functional.perplexity import perplexity_scale
from cmkd_lightning.losses import CMKDLoss
from tests.functional import _reference as ref

N, C = 9, 40


def _rows():
    g = torch.Generator().manual_seed(3)
    scales = torch.linspace(0.3, 30, N, dtype=torch.float64)[:, None]
    zt = torch.randn(N, C, generator=g, dtype=torch.float64) * scales
    zt[0, :] = torch.linspace(-1, 1, C, dtype=torch.float64)  # a ramp
    zt[1, 5] += 40.0  # one class far above its row
    zs = zt + 2 * torch.randn(N, C, generator=g, dtype=torch.float64)
    return zs, zt


def _scipy_scale(row: np.ndarray, k: float) -> float:
    """The b > 0 with exp(H(softmax(b * row))) = k, by Brent's method on log b."""

    def gap(log_b):
        p = ref.softmax(math.exp(log_b) * row)
        return -float(np.sum(p * np.log(np.clip(p, 1e-300, None)))) - math.log(k)

    return math.exp(optimize.brentq(gap, -30.0, 30.0, xtol=1e-14))


@pytest.mark.parametrize("k", [1.5, 4.0, 10.0, 32.0])
def test_scale_matches_scipy_root_finding(k):
    _, zt = _rows()
    got = perplexity_scale(zt, k)
    assert got.shape == (N, 1) and got.dtype == torch.float64
    want = [_scipy_scale(row - row.mean(), k) for row in zt.numpy()]
    np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-6)
    p = torch.softmax(got * zt, dim=-1)
    ppl = (-(p * p.log()).sum(-1)).exp()
    torch.testing.assert_close(ppl, torch.full((N,), k, dtype=torch.float64), rtol=1e-6, atol=0)


def test_scale_is_invariant_to_shifts_and_inverse_to_scaling():
    _, zt = _rows()
    b = perplexity_scale(zt, 10.0)
    torch.testing.assert_close(perplexity_scale(zt + 7.0, 10.0), b)
    torch.testing.assert_close(perplexity_scale(3.0 * zt, 10.0), b / 3.0)


def test_half_inputs_give_float32_scales_and_no_gradient():
    zt = torch.randn(4, 100).half().requires_grad_(True)
    b = perplexity_scale(zt, 10.0)
    assert b.dtype == torch.float32 and not b.requires_grad


def test_constant_rows_stay_finite():
    b = perplexity_scale(torch.zeros(2, 10, dtype=torch.float64), 3.0)
    assert torch.isfinite(b).all()


@pytest.mark.parametrize("bad", [1.0, 0.5, C, 100.0, True, "10"])
def test_bad_perplexity_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="Expected `target_perplexity` to be"):
        perplexity_scale(torch.randn(2, C), bad)


def test_cmkd_with_a_target_perplexity_matches_a_naive_loop():
    # Eq. 12's Pearson term with T_i = 1 / b_i per row (b_i from scipy), the Spearman term and Eq. 16 unchanged.
    zs, zt = _rows()
    k = 8.0
    soft = soft_rank(zscore(zs), 1.0 / C).numpy()
    ent, lp, ls = [], [], []
    for i, (s, t) in enumerate(zip(zs.numpy(), zt.numpy())):
        zhat_s, zhat_t = ref.zscore_row(s), ref.zscore_row(t)
        b = _scipy_scale(zhat_t - zhat_t.mean(), k)
        ps, pt = ref.softmax(b * zhat_s), ref.softmax(b * zhat_t)
        q = ref.softmax(t)
        ent.append(-float(np.sum(q * np.log(q))))
        lp.append(1 - ref.pearson(ps, pt))
        ls.append(1 - ref.pearson(soft[i], stats.rankdata(t)))
    hard = np.array(ent) >= np.mean(ent)
    want = np.where(hard, 4.0 * np.array(lp) + np.array(ls), np.array(lp) + 4.0 * np.array(ls))
    terms = cmkd_terms(zs, zt, target_perplexity=k, pearson_scale="paper", regularization_strength=1.0 / C)
    np.testing.assert_allclose(terms.pearson.numpy(), lp, rtol=1e-6)
    np.testing.assert_allclose(terms.loss.numpy(), want, rtol=1e-6)
    np.testing.assert_array_equal(terms.hard.numpy(), hard)
    # the temperature plays no part once a perplexity is set
    torch.testing.assert_close(
        cmkd_terms(zs, zt, target_perplexity=k, temperature=0.3).loss, cmkd_terms(zs, zt, target_perplexity=k).loss
    )


def test_the_loss_module_runs_the_same_and_records_the_setting():
    zs, zt = _rows()
    zs = zs.float().requires_grad_(True)
    loss = CMKDLoss(target_perplexity=8.0)
    out = loss(zs, zt.float())
    want = cmkd_terms(zs.detach(), zt.float(), target_perplexity=8.0).loss.mean()
    torch.testing.assert_close(out["loss"].detach(), want)
    out["loss"].backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
    assert "target_perplexity=8.0" in repr(loss)
    assert loss.init_args()["target_perplexity"] == 8.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_perplexity": 1.0}, r"Expected `target_perplexity` to be None or a number > 1, but got 1.0"),
        ({"target_perplexity": 5.0, "entropy_source": "loss"}, r"Expected `entropy_source='teacher'` .* got 'loss'"),
        (
            {"target_perplexity": 5.0, "temperature_units": "logits"},
            r"Expected `temperature_units='zscore'` .* got 'logits'",
        ),
        ({"target_perplexity": 5.0, "fused": True}, r"Expected `fused` to be False or 'auto' with target_perplexity"),
        ({"target_perplexity": 5.0, "preset": "paper"}, r"Expected `target_perplexity` to be None with preset='paper'"),
    ],
)
def test_bad_settings_are_refused_by_the_loss(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CMKDLoss(**kwargs)


def test_a_perplexity_at_or_above_the_class_count_is_refused_by_the_functional():
    zs, zt = _rows()
    with pytest.raises(ValueError, match=rf"below the number of classes \({C}\), but got {C}"):
        cmkd_terms(zs, zt, target_perplexity=float(C))
