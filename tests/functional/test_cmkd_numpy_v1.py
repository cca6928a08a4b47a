"""The NumPy CMKD kernel on NumPy 1.x, where ``np.vecdot`` (NumPy >= 2.0) does not exist: ``einsum`` takes over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------------------
# the lower bound pyproject.toml claims, really installed

ROOT = Path(__file__).resolve().parents[2]
# Installed next to the claimed NumPy because the test environment's newer releases refuse NumPy 1.x at import
# (torchmetrics imports scipy and matplotlib when they are present): the newest releases that accept NumPy 1.24.
_NUMPY_1_COMPANIONS = ("scipy>=1.11,<1.16", "matplotlib>=3.8,<3.10", "contourpy>=1.2,<1.3.1")
# The CMKD tests: the NumPy kernel is the only code with a NumPy 1.x / 2.x branch (a grep for NumPy-2-only names in
# cmkd_lightning/ and datamodules/ finds nothing else); the subprocess also imports the library and the data modules.
_LOWER_BOUND_TESTS = (
    "tests/functional/test_cmkd_numpy.py",
    "tests/functional/test_cmkd_numpy_v1.py",
    "tests/functional/test_cmkd_fused.py",
    "tests/functional/test_cmkd.py",
    "tests/losses/test_cmkd_preset.py",
)


def _claimed_numpy_lower_bound() -> str:
    """``X.Y`` of the ``numpy>=X.Y`` requirement in ``pyproject.toml``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"numpy\b", d)]
    match = re.fullmatch(r"numpy>=(\d+\.\d+)(\.\d+)?", spec.replace(" ", ""))
    if match is None:
        raise ValueError(f"Expected pyproject.toml to require 'numpy>=X.Y', but got {spec!r}.")
    return match.group(1)


@pytest.mark.slow
def test_cmkd_runs_on_the_claimed_numpy_lower_bound(tmp_path):
    """pyproject.toml's ``numpy>=X.Y``, installed for real: the CMKD tests pass on NumPy ``X.Y.*``.

    NumPy ``X.Y`` goes into a folder put first on ``PYTHONPATH`` (the environment itself is left alone); the tests
    run in a subprocess that first checks which NumPy it imported. Skipped, with pip's message, when pip cannot
    install it (no access to the package index).
    """
    bound = _claimed_numpy_lower_bound()
    if int(bound.split(".")[0]) >= 2:
        companions: tuple[str, ...] = ()  # the environment's scipy / matplotlib accept any NumPy 2
    else:
        companions = _NUMPY_1_COMPANIONS
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    install += ["--timeout", "30", "--retries", "1", "--target", str(target), f"numpy=={bound}.*", *companions]
    try:
        proc = subprocess.run(install, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not install numpy=={bound}.* within 600 s (no access to the package index?)")
    if proc.returncode != 0:
        pytest.skip(
            f"pip could not install numpy=={bound}.* and {', '.join(companions)} (no access to the package "
            f"index?): {proc.stderr.strip()[-600:]}"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    check = subprocess.run(
        [sys.executable, "-c", "import numpy, cmkd_lightning, datamodules; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip().startswith(f"{bound}."), f"expected NumPy {bound}.*, imported {check.stdout!r}"
    tests = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider"]
    run = subprocess.run([*tests, *_LOWER_BOUND_TESTS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert run.returncode == 0, f"NumPy {check.stdout.strip()}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout
