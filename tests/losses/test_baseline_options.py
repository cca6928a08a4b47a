"""Loss modules: logit standardisation on KD/DKD, NKD soft targets, integer target dtypes, their configs."""

import pytest
import torch
import torch.nn.functional as F

from cmkd_lightning import functional as fn
from cmkd_lightning.losses import DKDLoss, KDLoss, LSKDLoss, NKDLoss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(6, 8, generator=g, dtype=torch.float64)
    zt = torch.randn(6, 8, generator=g, dtype=torch.float64) * 3
    return zs, zt, torch.randint(0, 8, (6,), generator=g)


@pytest.mark.parametrize("T", [2.0, 4.0])
def test_kd_loss_with_logit_standardization_equals_lskd(batch, T):
    zs, zt, y = batch
    got = KDLoss(logit_standardization=True, temperature=T)(zs, zt, y)["loss"]
    torch.testing.assert_close(got, fn.lskd_loss(zs, zt, temperature=T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, LSKDLoss(temperature=T)(zs, zt)["loss"], rtol=1e-12, atol=1e-12)


def test_dkd_loss_with_logit_standardization_equals_the_function(batch):
    zs, zt, y = batch
    out = DKDLoss(alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True)(zs, zt, y)
    want = fn.dkd_loss(zs, zt, y, alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True)
    torch.testing.assert_close(out["loss"], want)
    assert set(out) == {"loss", "tckd_loss", "nckd_loss"}


@pytest.mark.parametrize("cls", [KDLoss, DKDLoss])
def test_logit_standardization_is_recorded_and_rebuilt(cls):
    loss = cls(logit_standardization=True, eps=1e-6)
    args = loss.to_config()["init_args"]
    assert args["logit_standardization"] is True and args["eps"] == 1e-6
    assert "logit_standardization=True" in repr(loss)
    assert cls(**args).init_args() == args
    assert cls().logit_standardization is False


@pytest.mark.parametrize("cls", [KDLoss, DKDLoss])
def test_logit_standardization_arguments_are_checked(cls):
    with pytest.raises(TypeError, match=r"Expected `logit_standardization` to be a bool, but got 'yes'\."):
        cls(logit_standardization="yes")
    with pytest.raises(ValueError, match=r"Expected `eps` to be a finite number > 0, but got -1\.0\."):
        cls(eps=-1.0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=str)
@pytest.mark.parametrize("cls", [DKDLoss, NKDLoss])
def test_target_losses_accept_any_integer_dtype(batch, cls, dtype):
    zs, zt, y = batch
    loss = cls()
    torch.testing.assert_close(loss(zs, zt, y.to(dtype))["loss"], loss(zs, zt, y)["loss"])


def test_nkd_loss_takes_soft_targets(batch):
    zs, zt, y = batch
    mixed = 0.6 * F.one_hot(y, 8).double() + 0.4 * F.one_hot(y.roll(1), 8).double()
    zs = zs.clone().requires_grad_(True)
    out = NKDLoss()(zs, zt, mixed)
    torch.testing.assert_close(out["loss"], NKDLoss()(zs, zt, y)["loss"])
    out["loss"].backward()
    assert torch.isfinite(zs.grad).all()
