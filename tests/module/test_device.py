"""Device correctness and host syncs of the training step.

The ``meta`` device has no data: any host read (``.item()``, ``bool(tensor)``, a boolean mask) or a mix of CPU
and device tensors raises there, so a step that runs on ``meta`` reads nothing from the device. CMKD's soft rank
needs a few reads (its pooling rounds are data-dependent); everything around it is checked on ``meta`` with the
soft rank stood in, and the reads of a real call are counted on CPU. With CUDA the same steps run under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import traceback
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from cmkd_lightning import DistillationModule
from cmkd_lightning.functional import cmkd as cmkd_functional
from cmkd_lightning.functional import cmkd_fused
from cmkd_lightning.functional.zscore import _zscore
from cmkd_lightning.losses import CMKDLoss, DISTLoss, DKDLoss, KDLoss, LSKDLoss, NKDLoss

C, N = 10, 8
LOSSES = {
    "kd": lambda: KDLoss(),
    "dkd_warmup": lambda: DKDLoss(warmup_epochs=4),  # epoch 0: factor 0.25 < 1, logged as train/dkd/warmup
    "dist": lambda: DISTLoss(),
    "lskd": lambda: LSKDLoss(),
    "nkd": lambda: NKDLoss(),
    "kd_ls": lambda: KDLoss(temperature=2.0, logit_standardization=True),
    "dkd_ls": lambda: DKDLoss(alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True),
}
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["meta", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")])]


def _module(losses: list[nn.Module], check_finite: bool | int = False) -> DistillationModule:
    return DistillationModule(
        student=nn.Linear(4, C), teacher=nn.Linear(4, C), losses=losses, num_classes=C, check_finite=check_finite
    )


@contextlib.contextmanager
def _no_sync(device: str) -> Iterator[None]:
    """On CUDA, any synchronising call raises; on meta, a host read raises by itself."""
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(N, C, generator=g) * 3, torch.randn(N, C, generator=g) * 3
    y = torch.randint(0, C, (N,), generator=g)
    return zs.to(device).requires_grad_(True), zt.to(device), y.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", LOSSES)
def test_compute_losses_and_backward_read_nothing_from_the_device(name, device):
    module = _module([LOSSES[name]()]).to(device)
    zs, zt, y = _inputs(device)
    with _no_sync(device):
        out = module.compute_losses(zs, zt, y)
        out["loss"].backward()
    assert all(v.device.type == device for v in out.values()), {k: v.device for k, v in out.items()}
    assert zs.grad is not None and zs.grad.device.type == device
    if name == "dkd_warmup":
        assert "dkd/warmup" in out


@pytest.mark.parametrize("device", DEVICES)
def test_every_loss_together_reads_nothing(device, monkeypatch):
    """All losses at once, CMKD included with its soft rank stood in by a differentiable identity."""
    monkeypatch.setattr(cmkd_functional, "soft_rank", lambda x, eps, backend="auto", validate_args=True: x * 1.0)
    module = _module([f() for f in LOSSES.values()] + [CMKDLoss()]).to(device)
    zs, zt, y = _inputs(device)
    with _no_sync(device):
        out = module.compute_losses(zs, zt, y)
        out["loss"].backward()
    assert {"cmkd/pearson_loss", "cmkd/spearman_loss", "cmkd/hard_fraction", "dkd/warmup"} <= set(out)
    assert all(v.device.type == device for v in out.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=str)
@pytest.mark.parametrize("cls", [DKDLoss, NKDLoss])
def test_integer_target_dtypes_read_nothing(cls, dtype, device):
    zs, zt, y = _inputs(device)
    with _no_sync(device):
        out = cls()(zs, zt, y.to(dtype))
        out["loss"].backward()
    assert out["loss"].device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_nkd_soft_targets_read_nothing(device):
    zs, zt, y = _inputs(device)
    soft = 0.7 * torch.nn.functional.one_hot(y, C).float() + 0.3 / C
    with _no_sync(device):
        out = NKDLoss()(zs, zt, soft)
        out["loss"].backward()
    assert out["loss"].device.type == device and zs.grad.device.type == device


def test_whole_shared_step_runs_on_meta():
    """Student and teacher forward, losses, accuracy metrics and epoch sums: nothing reads the device."""
    module = _module([f() for f in LOSSES.values()]).to("meta")
    x = torch.randn(N, 4, device="meta")
    y = torch.randint(0, C, (N,), device="meta")
    terms = module._shared_step((x, y), "train", 0)
    terms["loss"].backward()
    assert module.epoch_metrics["train_top1"].tp.device.type == "meta"
    assert module.epoch_metrics["train_means"].sums.device.type == "meta" and module.epoch_metrics["train_means"].keys


def test_warmup_factor_is_made_on_the_device_of_the_logits():
    module = _module([DKDLoss(warmup_epochs=4)])
    zs, zt, y = _inputs("cpu")
    out = module.compute_losses(zs.double(), zt.double(), y)
    torch.testing.assert_close(out["dkd/warmup"], torch.tensor(0.25))
    assert out["dkd/warmup"].dtype == torch.float32  # losses run in float32 whatever the input


# ---------------------------------------------------------------------------------------------------------------
# counting host reads on CPU


_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")


@contextlib.contextmanager
def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every Python-level device->host read (Tensor.item, bool(t), int(t), ..., nonzero), with its caller."""
    calls: list[str] = []
    with monkeypatch.context() as m:
        for attr in _READS:
            original = getattr(torch.Tensor, attr)

            def wrapped(self, *a, __original=original, __attr=attr, **k):
                frame = traceback.extract_stack(limit=3)[0]
                calls.append(f"{__attr} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}")
                return __original(self, *a, **k)

            m.setattr(torch.Tensor, attr, wrapped)
        original_nonzero = torch.nonzero

        def nonzero(*a, **k):
            frame = traceback.extract_stack(limit=2)[0]
            calls.append(f"torch.nonzero at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}")
            return original_nonzero(*a, **k)

        m.setattr(torch, "nonzero", nonzero)
        yield calls


@pytest.mark.parametrize("name", LOSSES)
def test_no_host_read_on_cpu_either(name, monkeypatch):
    module = _module([LOSSES[name]()])
    zs, zt, y = _inputs("cpu")
    with _count_reads(monkeypatch) as calls:
        module.compute_losses(zs, zt, y)["loss"].backward()
    assert calls == []


@pytest.mark.parametrize(("n", "c"), [(8, 10), (64, 100), (128, 1000)])
def test_cmkd_reads_only_in_the_soft_rank_pooling_rounds(n, c, monkeypatch):
    """Every host read of a CMKD step comes from the soft rank's block search: 2 + R (+1) per call."""
    soft_rank_module = importlib.import_module("cmkd_lightning.functional.soft_rank")
    rounds: list[int] = []
    original = soft_rank_module._kept

    def kept(*a, **k):
        rounds.append(1)
        return original(*a, **k)

    monkeypatch.setattr(soft_rank_module, "_kept", kept)
    module = _module([CMKDLoss(rank_backend="torch", fused=False)])  # the general path (fused: below)
    module.num_classes = c
    module.losses[0].regularization_strength = None
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(n, c, generator=g) * 3
    zs = (zt + torch.randn(n, c, generator=g) * 3).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=g)
    with _count_reads(monkeypatch) as calls:
        module.compute_losses(zs, zt, y)["loss"].backward()
    assert calls, "the torch soft rank needs at least its first reads"
    assert all("soft_rank.py" in call for call in calls), calls
    r = len(rounds)
    # small problems (N * (C + 1) <= 2**15): 1 read for the single-block pre-test, +1 when a row passes it,
    # 1 for the first block count, 1 per pooling round
    if n * (c + 1) <= 1 << 15:
        assert len(calls) in (2 + r, 3 + r), (calls, r)


def test_cmkd_without_its_soft_rank_reads_nothing(monkeypatch):
    """The whole CMKD loss around the soft rank (teacher stats, z-score, Pearson, entropy weights) on meta."""
    monkeypatch.setattr(cmkd_functional, "soft_rank", lambda x, eps, backend="auto", validate_args=True: x * 1.0)
    module = _module([CMKDLoss(sync_entropy_threshold=True)]).to("meta")
    zs, zt, y = _inputs("meta")
    out = module.compute_losses(zs, zt, y)
    out["loss"].backward()
    assert zs.grad.device.type == "meta"


def test_zscore_is_scale_safe_and_exact():
    x = torch.randn(4, 7, dtype=torch.float64) * 5
    ref = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)
    torch.testing.assert_close(_zscore(x), ref, rtol=1e-12, atol=1e-12)
    big = torch.tensor([[3e38, -3e38, 0.0, 1.0]])
    assert torch.isfinite(_zscore(big)).all()


@pytest.mark.parametrize(("n", "c"), [(8, 10), (64, 100), (128, 1000)])
def test_fused_cmkd_reads_no_more_than_the_general_path(n, c, monkeypatch):
    """The fused path's torch kernel (the one CUDA runs; forced here on CPU), torch backend, reads only in the
    same block search as the general path, as often."""
    monkeypatch.setattr(cmkd_fused, "NUMPY_DEVICES", ())
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(n, c, generator=g) * 3
    zs = zt + torch.randn(n, c, generator=g) * 3
    counts = {}
    for fused in (False, True):
        loss = CMKDLoss(rank_backend="torch", fused=fused)
        leaf = zs.clone().requires_grad_(True)
        with _count_reads(monkeypatch) as calls:
            loss(leaf, zt)["loss"].backward()
        counts[fused] = len(calls)
        where = ("soft_rank.py",) if not fused else ("soft_rank.py", "cmkd_fused.py")  # block search, its caller
        assert calls and all(any(w in call for w in where) for call in calls), calls
    assert counts[True] == counts[False], counts


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "torchsort",
            marks=pytest.mark.skipif(not importlib.util.find_spec("torchsort"), reason="torchsort is not installed"),
        ),
    ],
)
@pytest.mark.parametrize(("n", "c"), [(8, 10), (64, 1000)])  # 64 x 1000: NumPy's block search, not torchsort's
def test_fused_cmkd_numpy_kernel_reads_no_tensor(backend, n, c, monkeypatch):
    """On CPU the fused path runs in NumPy: no tensor value is read through torch (``.item()``, ``bool()``...)."""
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    with _count_reads(monkeypatch) as calls:
        CMKDLoss(rank_backend=backend, fused=True)(zs.requires_grad_(True), zt)["loss"].backward()
    assert calls == []


@pytest.mark.skipif(not importlib.util.find_spec("torchsort"), reason="torchsort is not installed")
def test_fused_cmkd_with_torchsort_reads_nothing(monkeypatch):
    monkeypatch.setattr(cmkd_fused, "NUMPY_DEVICES", ())  # the torch kernel, as on CUDA
    zs, zt, _ = _inputs("cpu")
    with _count_reads(monkeypatch) as calls:
        CMKDLoss(rank_backend="torchsort", fused=True)(zs, zt)["loss"].backward()
    assert calls == []
