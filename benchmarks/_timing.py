"""Timing helpers shared by the benchmark sections: interleaved rounds, medians, ratios, machine info.

Every comparison in the suite is measured *side by side*: the candidates run one after another within each round,
round after round, and a ratio is the median over rounds of the per-round ratio. On a machine shared with other
jobs this cancels slow drifts in the available CPU time, which a "measure A, then measure B" scheme does not.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.benchmark import Timer


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after synchronising ``device``."""
    synchronize(device)
    return time.perf_counter()


def timed_distillation_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    ce_weight: float,
    weight: float,
    device: torch.device,
) -> float:
    """Seconds of one training step: student forward, teacher forward without grad, CE + weighted loss, SGD step."""
    import torch.nn.functional as F

    start = now(device)
    opt.zero_grad(set_to_none=True)
    zs = student(x)
    with torch.no_grad():
        zt = teacher(x)
    total = ce_weight * F.cross_entropy(zs, y) + weight * loss_fn(zs, zt, y)["loss"]
    total.backward()
    opt.step()
    return now(device) - start


def timer_median(fn: Callable[[], Any], min_run_time: float, threads: int) -> float:
    """Median seconds per call of ``fn`` with :meth:`torch.utils.benchmark.Timer.blocked_autorange`.

    The Timer warms up, picks a block size that amortises the timer overhead, synchronises CUDA around each
    block, and runs with ``threads`` intra-op threads.
    """
    return Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time).median


def interleaved(
    fns: dict[str, Callable[[], Any]],
    baseline: str,
    rounds: int,
    min_run_time: float,
    threads: int,
) -> dict[str, dict[str, float]]:
    """Time every candidate in each of ``rounds`` rounds (order rotated per round); summarise against ``baseline``.

    Returns:
        ``{name: {"median_s", "min_s", "ratio", "ratio_lo", "ratio_hi"}}``: median / min seconds per call over the
        rounds, and the median (and range) over rounds of ``time / time[baseline]`` in the same round.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timer_median(fns[name], min_run_time, threads))
    out: dict[str, dict[str, float]] = {}
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times[baseline])]
        out[name] = {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "ratio": statistics.median(ratios),
            "ratio_lo": min(ratios),
            "ratio_hi": max(ratios),
        }
    return out


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """Median, min and max over pairs of ``a[i] / b[i]`` (times measured back to back)."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"ratio": statistics.median(ratios), "ratio_lo": min(ratios), "ratio_hi": max(ratios)}


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU model and cores (``lscpu``), load average, torch/lightning versions, GPU name, date."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
    }
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    try:
        from importlib.metadata import version

        import torchsort  # noqa: F401

        info["torchsort"] = version("torchsort")
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        info["torchsort"] = None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu_model"] = fields.get("Model name")
        info["cpus"] = fields.get("CPU(s)")
        info["cores_per_socket"] = fields.get("Core(s) per socket")
        info["threads_per_core"] = fields.get("Thread(s) per core")
    except (OSError, subprocess.CalledProcessError):
        info["cpu_model"] = platform.processor() or None
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
