"""Section A: forward + backward cost of every loss as a ratio to KD, the soft-rank backends, and CMKD's pieces.

Each measured call builds a fresh leaf from the student logits, runs the loss module exactly as the training module
calls it (``loss(student_logits, teacher_logits, targets)["loss"]``) and back-propagates to the logits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _timing import interleaved
from torch import Tensor

from cmkd_lightning.functional import cmkd_fused, pearson_corr, rank, soft_rank, teacher_stats, zscore
from cmkd_lightning.functional.cmkd_fused import fast_teacher_stats
from cmkd_lightning.losses import CMKDLoss, DistillationLoss, DISTLoss, DKDLoss, KDLoss, LSKDLoss, NKDLoss

SHAPES = ((64, 100), (128, 1000), (512, 1000))
TEMPERATURE = 4.0
# (shape, max ratio to KD) for the default CMKD loss
CMKD_TARGETS = {(64, 100): 4.0, (512, 1000): 8.0}


def torchsort_usable(device: torch.device) -> tuple[bool, str]:
    """Whether torchsort is importable and has a kernel for ``device``; the reason when not."""
    try:
        import torchsort
    except ImportError:
        return False, "torchsort is not installed"
    try:
        x = torch.randn(2, 5, device=device)
        torchsort.soft_rank(x, regularization_strength=0.1)
    except Exception as err:  # noqa: BLE001 - no kernel for this device, build problems, ...
        return False, f"torchsort fails on {device.type}: {type(err).__name__}: {err}"
    return True, ""


def make_logits(n: int, c: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Student logits ~ N(0, 1), teacher logits ~ N(0, 4) plus 4 on the target class (a confident teacher)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    student = torch.randn(n, c, generator=g)
    teacher = 2.0 * torch.randn(n, c, generator=g) + 4.0 * F.one_hot(targets, c)
    return student.to(device), teacher.to(device), targets.to(device)


def loss_candidates(has_torchsort: bool) -> dict[str, DistillationLoss]:
    """The losses of table A.1; the fused CMKD rows run the NumPy kernel on CPU (the torch kernel: ``torch_kernel``)."""
    losses: dict[str, DistillationLoss] = {
        "KD": KDLoss(temperature=TEMPERATURE),
        "DKD": DKDLoss(temperature=TEMPERATURE, warmup_epochs=0),
        "DIST": DISTLoss(temperature=TEMPERATURE),
        "LS-KD": LSKDLoss(),
        "NKD": NKDLoss(),
        "CMKD": CMKDLoss(temperature=TEMPERATURE),  # fused="auto": the fused path on CPU and CUDA
        "CMKD general": CMKDLoss(temperature=TEMPERATURE, fused=False),
    }
    for backend in ("torch", "torchsort") if has_torchsort else ("torch",):
        losses[f"CMKD fused[{backend}]"] = CMKDLoss(temperature=TEMPERATURE, rank_backend=backend, fused=True)
        losses[f"CMKD general[{backend}]"] = CMKDLoss(temperature=TEMPERATURE, rank_backend=backend, fused=False)
    return losses


TORCH_KERNEL_ROWS = ("CMKD fused[torchsort]", "CMKD fused[torch]")  # also timed on the torch kernel (CPU only)


def torch_kernel(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with the fused CMKD path forced onto its torch kernel (what CUDA runs; on CPU: the NumPy kernel)."""

    def run() -> Any:
        saved = cmkd_fused.NUMPY_DEVICES
        cmkd_fused.NUMPY_DEVICES = ()
        try:
            return fn()
        finally:
            cmkd_fused.NUMPY_DEVICES = saved

    return run


def count_numpy_calls(fn: Callable[[], Any]) -> int:
    """NumPy functions, ufuncs and array methods called by one call of ``fn`` (a ``sys.setprofile`` count)."""
    calls = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or type(owner).__module__
            if module.startswith("numpy") or isinstance(owner, (np.ndarray, np.ufunc)):
                calls += 1

    fn()
    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def count_aten_ops(fn: Callable[[], Any]) -> dict[str, int]:
    """aten operations of one call of ``fn``: as the profiler lists them (nested calls included) and as dispatched.

    ``profiler`` counts every ``aten::`` event of :mod:`torch.profiler` (an op and the ops it calls, e.g. the
    ``aten::to`` a Python-scalar operand costs); ``dispatched`` counts the top-level ops a
    ``TorchDispatchMode`` sees. Forward and backward on the calling thread (CPU).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            _Count.calls += 1
            return func(*args, **(kwargs or {}))

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    profiled = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    with _Count():
        fn()
    return {"profiler": profiled, "dispatched": _Count.calls, "numpy": count_numpy_calls(fn)}


def _fwd_bwd(loss: DistillationLoss, zs: Tensor, zt: Tensor, y: Tensor) -> Callable[[], None]:
    def run() -> None:
        leaf = zs.detach().requires_grad_(True)
        loss(leaf, zt, y)["loss"].backward()

    return run


def _soft_rank_fwd_bwd(zs: Tensor, backend: str) -> Callable[[], None]:
    eps = 1.0 / zs.shape[1]
    weights = torch.linspace(-1.0, 1.0, zs.shape[1], device=zs.device).expand_as(zs)

    def run() -> None:
        leaf = zs.detach().requires_grad_(True)
        (soft_rank(zscore(leaf), eps, backend=backend) * weights).sum().backward()

    return run


def _breakdown_candidates(
    zs: Tensor, zt: Tensor, y: Tensor, backends: list[str]
) -> dict[str, Callable[[], Any]]:
    """Pieces of CMKD, each timed on its own (forward + backward where it carries a gradient)."""
    eps = 1.0 / zs.shape[1]
    stats = teacher_stats(zt, temperature=TEMPERATURE)
    kd = KDLoss(temperature=TEMPERATURE)

    def pearson_path() -> None:
        leaf = zs.detach().requires_grad_(True)
        ps = F.softmax(zscore(leaf) / TEMPERATURE, dim=-1)
        (1.0 - pearson_corr(ps, stats.probs)).mean().backward()

    def spearman_path(backend: str) -> Callable[[], None]:
        def run() -> None:
            leaf = zs.detach().requires_grad_(True)
            ranks = soft_rank(zscore(leaf), eps, backend=backend)
            (1.0 - pearson_corr(ranks, stats.ranks)).mean().backward()

        return run

    fns: dict[str, Callable[[], Any]] = {
        "KD (fwd+bwd)": _fwd_bwd(kd, zs, zt, y),
        "torch.sort (N, C), no grad": lambda: torch.sort(zs, dim=1),
        **(
            {"numpy argsort (N, C), for comparison": lambda: np.argsort(zs.numpy(), axis=1)}
            if zs.device.type == "cpu"
            else {}
        ),
        "teacher stats (z-score, softmax, entropy, exact rank)": lambda: teacher_stats(zt, temperature=TEMPERATURE),
        "exact rank of teacher logits": lambda: rank(zt),
        "fused path's teacher stats (NumPy sort on CPU)": lambda: fast_teacher_stats(zt, temperature=TEMPERATURE),
        "Pearson path: z-score, softmax, Pearson (fwd+bwd)": pearson_path,
    }
    for backend in backends:
        fns[f"Spearman path [{backend}]: z-score, soft rank, Pearson (fwd+bwd)"] = spearman_path(backend)
    fns["CMKD spearman=False (fwd+bwd)"] = _fwd_bwd(CMKDLoss(temperature=TEMPERATURE, spearman=False), zs, zt, y)
    fns["CMKD general path (fwd+bwd)"] = _fwd_bwd(CMKDLoss(temperature=TEMPERATURE, fused=False), zs, zt, y)
    fns["CMKD fused path (fwd+bwd)"] = _fwd_bwd(CMKDLoss(temperature=TEMPERATURE), zs, zt, y)
    if zs.device.type == "cpu":
        fns["CMKD fused path, torch kernel (fwd+bwd)"] = torch_kernel(fns["CMKD fused path (fwd+bwd)"])
    return fns


def python_profile_table(fn: Callable[[], Any], iterations: int = 5, rows: int = 12) -> dict[str, Any]:
    """cProfile over ``iterations`` calls: the top ``rows`` functions by own time, per call (sees NumPy)."""
    import cProfile
    import pstats

    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iterations):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:rows]
    return {
        "sort_by": "own time (cProfile)",
        "total_ms_per_call": total / iterations * 1e3,
        "ops": [
            {
                "name": f"{name}" if file == "~" else f"{file.rsplit('/', 1)[-1]}:{line}({name})",
                "self_ms_per_call": v[2] / iterations * 1e3,
                "share": v[2] / total,
                "calls_per_call": v[1] / iterations,
            }
            for (file, line, name), v in top
        ],
    }


def profile_table(fn: Callable[[], Any], device: torch.device, iterations: int = 5, rows: int = 10) -> dict[str, Any]:
    """torch.profiler over ``iterations`` calls: the top ``rows`` ops by self time, per call."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        fn()
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            fn()
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in averages) or 1.0
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    return {
        "sort_by": key,
        "total_ms_per_call": total / iterations / 1e3,
        "ops": [
            {
                "name": e.key,
                "self_ms_per_call": getattr(e, key) / iterations / 1e3,
                "share": getattr(e, key) / total,
                "calls_per_call": e.count / iterations,
            }
            for e in top
        ],
    }


def run(device: torch.device, quick: bool, threads: int, profile: bool) -> dict[str, Any]:
    rounds, min_run_time = (3, 0.05) if quick else (5, 0.1)
    has_torchsort, why_not = torchsort_usable(device)
    backends = ["torch", "torchsort"] if has_torchsort else ["torch"]
    result: dict[str, Any] = {
        "rounds": rounds,
        "min_run_time_s": min_run_time,
        "torchsort": has_torchsort,
        "torchsort_note": why_not,
        "losses": {},
        "aten_ops": {},
        "soft_rank": {},
        "cmkd_breakdown": {},
        "profiles": {},
    }
    for n, c in SHAPES:
        zs, zt, y = make_logits(n, c, device)
        shape = f"{n}x{c}"
        fns = {name: _fwd_bwd(loss.to(device), zs, zt, y) for name, loss in loss_candidates(has_torchsort).items()}
        if device.type == "cpu":
            for name in TORCH_KERNEL_ROWS:
                if name in fns:
                    fns[name.replace("fused", "fused, torch kernel")] = torch_kernel(fns[name])
        result["losses"][shape] = interleaved(fns, "KD", rounds, min_run_time, threads)
        if device.type == "cpu":
            result["aten_ops"][shape] = {
                name: count_aten_ops(fns[name]) for name in fns if name == "KD" or name.startswith("CMKD")
            }
        target = CMKD_TARGETS.get((n, c))
        if target is not None:
            result["losses"][shape]["CMKD"]["target"] = target

        sr = {b: _soft_rank_fwd_bwd(zs, b) for b in backends}
        result["soft_rank"][shape] = interleaved(sr, backends[-1], rounds, min_run_time, threads)

        result["cmkd_breakdown"][shape] = interleaved(
            _breakdown_candidates(zs, zt, y, backends), "KD (fwd+bwd)", rounds, min_run_time, threads
        )
        missed = target is not None and result["losses"][shape]["CMKD"]["ratio"] > target
        if profile and (missed or not quick):
            torch.set_num_threads(threads)
            cmkd = _fwd_bwd(CMKDLoss(temperature=TEMPERATURE), zs, zt, y)
            result["profiles"][f"CMKD {shape}"] = (
                python_profile_table(cmkd, rows=14) if device.type == "cpu" else profile_table(cmkd, device, rows=14)
            )
    return result
