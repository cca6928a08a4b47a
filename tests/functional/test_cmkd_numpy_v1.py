"""The NumPy CMKD kernel on NumPy 1.x, where ``np.vecdot`` (NumPy >= 2.0) does not exist: ``einsum`` takes over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_lightning.functional import _cmkd_numpy as K
from cmkd_lightning.losses import CMKDLoss


@pytest.fixture
def numpy_1x(monkeypatch):
    """``_cmkd_numpy`` as it runs on NumPy 1.x: no ``np.vecdot``."""
    monkeypatch.setattr(K, "_vecdot", None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rowdot_without_vecdot_is_the_row_sum_of_products(numpy_1x, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 13)).astype(dtype), rng.normal(size=(7, 13)).astype(dtype)
    expected = np.array([sum(float(x) * float(y) for x, y in zip(ra, rb)) for ra, rb in zip(a, b)])
    got = K.rowdot(a, b)
    assert got.shape == (7,) and got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(K.rowdot(a[:, ::2], b[:, ::2]), (a[:, ::2] * b[:, ::2]).sum(1), rtol=1e-5)


def test_cmkd_loss_on_cpu_is_the_same_without_vecdot(monkeypatch):
    """The whole CPU CMKD loss (forward and backward through the NumPy kernel) with and without ``np.vecdot``."""
    torch.manual_seed(0)
    teacher = torch.randn(32, 100, dtype=torch.float64) * 3
    student = (teacher + torch.randn(32, 100, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 100, (32,))

    def run():
        student.grad = None
        out = CMKDLoss()(student, teacher, targets)
        out["loss"].backward()
        return {k: v.detach().clone() for k, v in out.items()}, student.grad.clone()

    with_vecdot = run()
    monkeypatch.setattr(K, "_vecdot", None)
    without = run()
    for key, value in with_vecdot[0].items():
        torch.testing.assert_close(without[0][key], value, rtol=1e-10, atol=1e-12, msg=key)
    torch.testing.assert_close(without[1], with_vecdot[1], rtol=1e-10, atol=1e-12)
