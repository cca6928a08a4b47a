"""The fused CMKD path equals the general path (values, gradients, components) for every option it covers."""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import pytest
import torch

from cmkd_lightning.functional import cmkd_fused as fused_module
from cmkd_lightning.functional import cmkd_terms, rank, teacher_stats
from cmkd_lightning.functional.cmkd_fused import cmkd_fused_terms, fast_teacher_stats
from cmkd_lightning.losses import CMKDLoss
from cmkd_lightning.losses import cmkd as cmkd_loss_module

HAS_TORCHSORT = importlib.util.find_spec("torchsort") is not None
BACKENDS = ["torch", pytest.param("torchsort", marks=pytest.mark.skipif(not HAS_TORCHSORT, reason="no torchsort"))]
OPTIONS = {
    "default": {},
    "zscore_off": {"zscore": False},
    "spearman_off": {"spearman": False},
    "dynamic_off": {"dynamic_weighting": False},
    "t_squared": {"temperature_squared": True},
    "paper_scale": {"pearson_scale": "paper"},
    "scale_number": {"pearson_scale": 2.5, "beta": 3.0, "gamma": 0.5},
    "threshold_tensor": {"entropy_threshold": torch.tensor(3.5, dtype=torch.float64)},
    "threshold_float": {"entropy_threshold": 0.5},
    "temperature_1": {"temperature": 1.0},
    "eps_r": {"regularization_strength": 0.05},
}


@pytest.fixture(params=["numpy", "torch"])
def kernel(request, monkeypatch):
    """The fused path's CPU kernel (NumPy, ``_cmkd_numpy.py``) and its torch kernel (what CUDA runs), on CPU."""
    if request.param == "torch":
        monkeypatch.setattr(fused_module, "NUMPY_DEVICES", ())
    return request.param


def _data(n: int, c: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    zs = zt + torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    return zs.to(dtype), zt.to(dtype)


def _both(zs: torch.Tensor, zt: torch.Tensor, **kwargs):
    """General and fused terms and gradients of a weighted sum of the per-sample loss."""
    weights = torch.linspace(0.5, 1.5, zs.shape[0], dtype=zs.dtype)
    out = []
    for fn in (cmkd_terms, cmkd_fused_terms):
        leaf = zs.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zscore=False with Spearman, affine regime
            terms = fn(leaf, zt, validate_args=False, **kwargs)
        (terms.loss * weights).sum().backward()
        out.append((terms, leaf.grad))
    return out


def _assert_same(general, fused, rtol: float = 1e-10) -> None:
    (tg, gg), (tf, gf) = general, fused
    scale = gg.abs().max().clamp_min(1.0)
    for name in ("loss", "pearson", "spearman", "entropy"):
        torch.testing.assert_close(getattr(tf, name), getattr(tg, name).detach(), rtol=rtol, atol=rtol, msg=name)
    assert torch.equal(tf.hard, tg.hard)
    torch.testing.assert_close(gf / scale, gg / scale, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize(("n", "c"), [(1, 7), (8, 10), (64, 100), (16, 1000), (40, 1000)])  # 40k: NumPy's PAV
def test_fused_equals_general(option, backend, n, c, kernel):
    zs, zt = _data(n, c, seed=n + c)
    _assert_same(*_both(zs, zt, rank_backend=backend, **OPTIONS[option]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_and_constant_rows(backend, kernel):
    zs, zt = _data(6, 12, seed=3)
    zt[0, :4] = 1.5  # teacher ties: averaged exact ranks
    zt[1] = 2.0  # constant teacher row
    zs[2] = -0.7  # constant student row
    zs[3, ::2] = zs[3, 1]  # student ties: they share a soft-rank block
    zs[4] = zt[4]  # student equals teacher
    _assert_same(*_both(zs, zt, rank_backend=backend))
    _assert_same(*_both(zs, zt, rank_backend=backend, zscore=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16, 20), (48, 1000)])
def test_integer_valued_logits_with_many_ties(backend, kernel, shape):
    g = torch.Generator().manual_seed(5)
    zs = torch.randint(-3, 4, shape, generator=g).double()
    zt = torch.randint(-3, 4, shape, generator=g).double()
    _assert_same(*_both(zs, zt, rank_backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_and_near_constant_rows(backend, kernel):
    """Rows the unscaled z-score cannot take (overflowing squares, a spread 1e-16 of the size) match too."""
    zs, zt = _data(5, 9, seed=2)
    zs[0, :2] = torch.tensor([1e200, -1e200], dtype=torch.float64)
    zs[1] = 1e5 + torch.arange(9, dtype=torch.float64) * 1e-12
    zt[2, 0] = -1e250
    _assert_same(*_both(zs, zt, rank_backend=backend))


def test_fast_teacher_stats_equal_teacher_stats(kernel):
    zs, zt = _data(32, 50)
    zt[:, :5] = 0.25  # ties
    zt[3] = 1.0  # constant row
    for zscore in (True, False):
        fast, ref = fast_teacher_stats(zt, zscore=zscore), teacher_stats(zt, zscore=zscore)
        for a, b in zip(fast, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_teacher_stats(zt.float()).ranks, rank(zt.float()), rtol=0, atol=0)


def test_precomputed_teacher_is_shared():
    zs, zt = _data(8, 10)
    stats = fast_teacher_stats(zt)
    a = cmkd_fused_terms(zs, zt, teacher=stats).loss
    torch.testing.assert_close(a, cmkd_terms(zs, zt, teacher=stats).loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", ["default", "zscore_off", "spearman_off", "dynamic_off", "t_squared"])
def test_gradcheck(option, backend, kernel):
    zs, zt = _data(4, 6, seed=11)
    kwargs = {"rank_backend": backend, **OPTIONS[option]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(
            lambda x: cmkd_fused_terms(x, zt, validate_args=False, **kwargs).loss,
            (zs.clone().requires_grad_(True),),
            eps=1e-7,
            atol=1e-6,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_within_float32_rounding_of_float64(backend, kernel):
    zs, zt = _data(64, 100)
    ref = _both(zs, zt, rank_backend=backend)[1]
    leaf = zs.float().requires_grad_(True)
    terms = cmkd_fused_terms(leaf, zt.float(), rank_backend=backend)
    terms.loss.sum().backward()
    assert terms.loss.dtype == torch.float32
    torch.testing.assert_close(terms.loss.double(), ref[0].loss.detach(), rtol=1e-4, atol=1e-5)
    leaf64 = zs.clone().requires_grad_(True)
    cmkd_fused_terms(leaf64, zt, rank_backend=backend).loss.sum().backward()
    scale = leaf64.grad.abs().max()
    torch.testing.assert_close(leaf.grad.double() / scale, leaf64.grad / scale, rtol=1e-4, atol=1e-5)


def test_half_inputs_run_in_float32(kernel):
    zs, zt = _data(8, 10, dtype=torch.bfloat16)
    assert cmkd_fused_terms(zs, zt).loss.dtype == torch.float32


def test_double_backward_is_refused(kernel):
    zs, zt = _data(4, 6)
    leaf = zs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cmkd_fused_terms(leaf, zt).loss.sum(), leaf, create_graph=True)
    assert not grad.requires_grad  # once differentiable: no graph of the backward, so no silent wrong answer
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad.sum().backward()


def test_validate_args_checks_values_and_arguments():
    zs, zt = _data(4, 6)
    zs[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`student_logits` to be finite"):
        cmkd_fused_terms(zs, zt)
    with pytest.raises(ValueError, match="`temperature`"):
        cmkd_fused_terms(zt, zt, temperature=0.0)


# ------------------------------------------------------------------------------------------------------------
# which path CMKDLoss runs


@pytest.fixture
def spy(monkeypatch):
    """Records which path CMKDLoss took: 'fused' or 'general'."""
    taken: list[str] = []

    def wrap(fn, label):
        def inner(*a, **k):
            taken.append(label)
            return fn(*a, **k)

        return inner

    monkeypatch.setattr(cmkd_loss_module, "cmkd_fused_terms", wrap(cmkd_fused_terms, "fused"))
    monkeypatch.setattr(cmkd_loss_module, "cmkd_terms", wrap(cmkd_terms, "general"))
    return taken


@pytest.mark.parametrize(("fused", "device", "expected"), [
    ("auto", "cpu", "fused"),
    (True, "cpu", "fused"),
    (False, "cpu", "general"),
    ("auto", "meta", "general"),  # devices other than CPU and CUDA: the general path
])  # fmt: skip
def test_cmkd_loss_path(fused, device, expected, spy, monkeypatch):
    if device == "meta":  # the general path's soft rank reads the device: stand it in
        monkeypatch.setattr(
            "cmkd_lightning.functional.cmkd.soft_rank", lambda x, eps, backend="auto", validate_args=True: x * 1.0
        )
    zs, zt = _data(8, 10, dtype=torch.float32)
    out = CMKDLoss(fused=fused)(zs.to(device).requires_grad_(True), zt.to(device))
    out["loss"].backward()
    assert spy == [expected]


def test_cmkd_loss_components_agree():
    zs, zt = _data(64, 100, dtype=torch.float32)
    a = CMKDLoss(fused=True)(zs, zt)
    b = CMKDLoss(fused=False)(zs, zt)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_cmkd_loss_rejects_a_bad_fused_value():
    with pytest.raises(ValueError, match="Expected `fused` to be True, False or 'auto', but got 'yes'"):
        CMKDLoss(fused="yes")


def test_fused_path_on_meta_reads_nothing_around_its_block_search(monkeypatch):
    """Everything but the block search (stood in: every row one block) runs on ``meta``: no host read."""
    monkeypatch.setattr(fused_module, "_isotonic_block_starts", lambda y: (None, None))
    zs, zt = _data(8, 10, dtype=torch.float32)
    leaf = zs.to("meta").requires_grad_(True)
    out = CMKDLoss(fused=True, rank_backend="torch", sync_entropy_threshold=True)(leaf, zt.to("meta"))
    out["loss"].backward()
    assert leaf.grad.device.type == "meta"


@pytest.mark.parametrize(("numpy_devices", "expected"), [(("cpu",), "_CMKDStudentNumpy"), ((), "_CMKDStudent")])
def test_cpu_runs_the_numpy_kernel(numpy_devices, expected, monkeypatch):
    """On CPU the fused path runs the NumPy kernel; elsewhere (CUDA) the torch one, which it falls back to here."""
    monkeypatch.setattr(fused_module, "NUMPY_DEVICES", numpy_devices)
    zs, zt = _data(4, 6, dtype=torch.float32)
    terms = cmkd_fused_terms(zs.requires_grad_(True), zt)
    assert type(terms.loss.grad_fn).__name__ == expected + "Backward"


@pytest.mark.parametrize("zscore", [True, False])
def test_non_contiguous_student_logits(zscore, kernel):
    """A transposed view (what a model's ``.t()`` head gives) is read in place by the NumPy kernel."""
    base = _data(12, 8, seed=9)[0]
    zt = _data(8, 12, seed=10)[1]
    out = []
    for fn in (cmkd_terms, cmkd_fused_terms):
        leaf = base.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zscore=False with Spearman
            loss = fn(leaf.t(), zt, zscore=zscore).loss
        loss.sum().backward()
        out.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 6), (64, 1000)])  # torchsort's kernel / the NumPy PAV on CPU
@pytest.mark.parametrize("fused", [True, False])
def test_torchsort_backend_without_torchsort_says_how_to_install_it(shape, fused, monkeypatch):
    soft_rank_module = importlib.import_module(
        "cmkd_lightning.functional.soft_rank"
    )  # the package's name is a function
    monkeypatch.setattr(soft_rank_module, "_torchsort", None)
    monkeypatch.setattr(soft_rank_module, "_torchsort_missing", True)
    zs, zt = _data(*shape, dtype=torch.float32)
    with pytest.raises(ImportError, match="needs the torchsort package, which is not installed"):
        CMKDLoss(rank_backend="torchsort", fused=fused)(zs, zt)
