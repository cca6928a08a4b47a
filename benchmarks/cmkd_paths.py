"""Whole training steps with each CMKD implementation, side by side: is a path other than the general one worth it?

Issue 21 keeps a CMKD path other than the general one (``cmkd_lightning/functional/cmkd.py``, the reference) only
where it buys at least 5 % of a *whole* training step on a device users run. This script times that step for each
path that the installed code still has:

- ``general``: ``CMKDLoss(fused=False)``, the reference;
- ``fused, torch kernel``: the fused path's torch implementation (what CUDA runs; forced on CPU);
- ``fused, NumPy kernel``: the fused path's NumPy implementation (what CPU tensors ran under ``fused="auto"``);
- ``KD`` (CE 0.1 + KD 0.9), for scale: what a step costs without CMKD.

A step is what ``DistillationModule.training_step`` does for these losses: student forward, frozen teacher forward
under ``torch.no_grad()``, ``ce_weight * CE + weight * loss(student_logits, teacher_logits, targets)["loss"]``,
backward, SGD step (lr 0.05, momentum 0.9, weight decay 5e-4). Every timed step starts from the same student
weights and momentum buffers (copied back outside the timed region, into the same tensors), so every candidate
times the same computation. The candidates are interleaved step by step: a *sweep* times one step of each, back
to back, in an order that rotates from sweep to sweep; a round is ``steps`` sweeps (after ``warmup`` untimed
sweeps at the start). Reported per candidate: the median over rounds of its per-round median step time (range:
the rounds' medians), and its step time over the general path's *in the same sweep*, median over all sweeps
(range: the per-round medians). The loss alone (forward + backward at the step's logits, CE included) is timed the
same way, which gives the saving as a share of a step from its parts, ``(t_loss_general - t_loss_path) /
t_step_general`` per round: far less noisy than the ratio of two whole steps on a shared machine.

Configurations:

- ``digits``: the quickstart pair ``digits_teacher -> digits_student`` (``examples/configs/digits/``), composed
  digits 1x8x16, 100 classes, batch 128;
- ``cifar``: ``resnet32x4 -> resnet8x4``, batch 64, 3x32x32, 100 classes (the CIFAR-100 recipe);
- ``digits1000``: a 1000-class head with a small backbone, the digits pair on three digits (1x8x24, 1000 classes),
  batch 256.

Inputs are random (N(0, 1) images, uniform labels) and the networks are freshly initialised: the cost of every
operation here depends on the shapes, not on the values, except the soft rank's isotonic regression, whose
torchsort kernel is linear in the row length whatever the blocks.

Usage::

    python benchmarks/cmkd_paths.py                  # full run (CPU, 1 thread)
    python benchmarks/cmkd_paths.py --quick          # fewer rounds and steps
    python benchmarks/cmkd_paths.py --device cuda    # on a GPU: the NumPy kernel is CPU-only and is skipped
    # options: --configs digits cifar digits1000, --rounds N, --threads N, --out PATH

Writes ``benchmarks/results-cmkd-paths-<device>.json`` (``...-quick.json`` with ``--quick``; every raw time, the
machine, the command) unless ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import machine_info, now, timed_distillation_step  # noqa: E402

from cmkd_lightning.losses import CMKDLoss, KDLoss  # noqa: E402
from cmkd_lightning.models import create_model  # noqa: E402

THRESHOLD = 0.05  # issue 21: a path stays only where it buys >= 5 % of a whole step

CONFIGS: dict[str, dict[str, Any]] = {
    "digits": {
        "teacher": "digits_teacher",
        "student": "digits_student",
        "model_kwargs": {"num_digits": 2},
        "classes": 100,
        "input": (1, 8, 16),
        "batch": 128,
    },
    "cifar": {
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "model_kwargs": {},
        "classes": 100,
        "input": (3, 32, 32),
        "batch": 64,
    },
    "digits1000": {
        "teacher": "digits_teacher",
        "student": "digits_student",
        "model_kwargs": {"num_digits": 3},
        "classes": 1000,
        "input": (1, 8, 24),
        "batch": 256,
    },
}

# (rounds, warm-up steps, timed steps per round) per configuration, full and --quick
SCHEDULE = {
    "digits": ((11, 3, 40), (3, 2, 10)),
    "cifar": ((5, 1, 2), (2, 1, 1)),
    "digits1000": ((9, 3, 12), (3, 2, 4)),
}


# ---------------------------------------------------------------------------------------------------------------
# the candidates


def _fused_module() -> Any | None:
    """``cmkd_lightning.functional.cmkd_fused`` if the installed code still has the fused path, else ``None``."""
    try:
        return importlib.import_module("cmkd_lightning.functional.cmkd_fused")
    except ImportError:
        return None


@contextlib.contextmanager
def _torch_kernel() -> Iterator[None]:
    """The fused path on its torch kernel (what CUDA runs) even for CPU tensors."""
    fused = _fused_module()
    saved = fused.NUMPY_DEVICES
    fused.NUMPY_DEVICES = ()
    try:
        yield
    finally:
        fused.NUMPY_DEVICES = saved


def candidates(device: torch.device) -> dict[str, tuple[Any, float, float, Callable[[], Any]]]:
    """``{name: (loss module, ce_weight, loss weight, context factory)}`` for the paths this code has."""
    plain = contextlib.nullcontext
    out: dict[str, tuple[Any, float, float, Callable[[], Any]]] = {
        "general": (CMKDLoss(temperature=4.0, fused=False), 1.0, 1.0, plain),
    }
    fused = _fused_module()
    if fused is not None:
        if device.type == "cuda":
            out["fused, torch kernel"] = (CMKDLoss(temperature=4.0, fused=True), 1.0, 1.0, plain)
        else:
            out["fused, torch kernel"] = (CMKDLoss(temperature=4.0, fused=True), 1.0, 1.0, _torch_kernel)
            if device.type in getattr(fused, "NUMPY_DEVICES", ()):
                out["fused, NumPy kernel"] = (CMKDLoss(temperature=4.0, fused=True), 1.0, 1.0, plain)
    out["KD"] = (KDLoss(temperature=4.0), 0.1, 0.9, plain)
    return out


# ---------------------------------------------------------------------------------------------------------------
# one configuration


def run_config(name: str, device: torch.device, quick: bool, rounds: int | None) -> dict[str, Any]:
    cfg = CONFIGS[name]
    n_rounds, warmup, steps = SCHEDULE[name][1 if quick else 0]
    n_rounds = rounds or n_rounds
    torch.manual_seed(0)
    kwargs = cfg["model_kwargs"]
    teacher = create_model(cfg["teacher"], num_classes=cfg["classes"], **kwargs).to(device).eval()
    teacher.requires_grad_(False)
    student = create_model(cfg["student"], num_classes=cfg["classes"], **kwargs).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], *cfg["input"], generator=g).to(device)
    y = torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g).to(device)

    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    # one CE step so that the momentum buffers exist; then every timed step starts from this state
    F.cross_entropy(student(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    params = [p.detach().clone() for p in student.parameters()]
    buffers = [b.detach().clone() for b in student.buffers()]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in student.parameters()]

    def restore() -> None:
        with torch.no_grad():
            for p, saved in zip(student.parameters(), params):
                p.copy_(saved)
            for b, saved in zip(student.buffers(), buffers):
                b.copy_(saved)
            for p, saved in zip(student.parameters(), momenta):
                opt.state[p]["momentum_buffer"].copy_(saved)

    cands = candidates(device)

    def step(loss_fn: Any, ce_weight: float, weight: float) -> float:
        restore()
        return timed_distillation_step(student, teacher, opt, x, y, loss_fn, ce_weight, weight, device)

    # the loss alone, forward + backward, on the step's own logits
    with torch.no_grad():
        zs0, zt0 = student(x), teacher(x)

    def loss_only(loss_fn: Any, ce_weight: float, weight: float) -> float:
        zs = zs0.detach().clone().requires_grad_(True)
        start = now(device)
        total = ce_weight * F.cross_entropy(zs, y) + weight * loss_fn(zs, zt0, y)["loss"]
        total.backward()
        return now(device) - start

    loss_reps = max(steps, 20)
    names = list(cands)

    def sweep(fn: Callable[..., float], r: int, i: int) -> dict[str, float]:
        """One timing of every candidate, back to back, in an order that rotates with the round and the sweep."""
        shift = (r + i) % len(names)
        out = {}
        for cand in names[shift:] + names[:shift]:
            loss_fn, ce_w, w, context = cands[cand]
            with context():
                out[cand] = fn(loss_fn, ce_w, w)
        return out

    for i in range(warmup):
        sweep(step, 0, i)
        sweep(loss_only, 0, i)
    # per round and candidate: the step times, the loss times and the step time over the general path's in the
    # same sweep (adjacent in time, so a change in the machine's load hits both)
    step_times: dict[str, list[list[float]]] = {n: [] for n in names}
    loss_times: dict[str, list[list[float]]] = {n: [] for n in names}
    paired: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(n_rounds):
        for store in (step_times, loss_times, paired):
            for cand in names:
                store[cand].append([])
        for i in range(steps):
            times = sweep(step, r, i)
            for cand in names:
                step_times[cand][r].append(times[cand])
                paired[cand][r].append(times[cand] / times["general"])
        for i in range(loss_reps):
            times = sweep(loss_only, r, i)
            for cand in names:
                loss_times[cand][r].append(times[cand])
        print(f"  {name}: round {r + 1}/{n_rounds} done", flush=True)

    med = statistics.median
    rows: dict[str, Any] = {}
    for cand in names:
        step_r = [med(v) for v in step_times[cand]]  # per round
        loss_r = [med(v) for v in loss_times[cand]]
        ratio_r = [med(v) for v in paired[cand]]
        saving_r = [
            (med(lb) - med(lt)) / med(sb)
            for lt, lb, sb in zip(loss_times[cand], loss_times["general"], step_times["general"])
        ]
        rows[cand] = {
            "step_ms": 1e3 * med(step_r),
            "step_ms_range": [1e3 * min(step_r), 1e3 * max(step_r)],
            "step_ratio": med([x for v in paired[cand] for x in v]),
            "step_ratio_range": [min(ratio_r), max(ratio_r)],
            "loss_ms": 1e3 * med(loss_r),
            "loss_ms_range": [1e3 * min(loss_r), 1e3 * max(loss_r)],
            "saving_from_parts": med(saving_r),
            "saving_from_parts_range": [min(saving_r), max(saving_r)],
            "raw_step_s": [[round(t, 6) for t in v] for v in step_times[cand]],  # per round, per sweep
            "raw_loss_s": [[round(t, 6) for t in v] for v in loss_times[cand]],
        }
    return {
        "config": {**cfg, "input": list(cfg["input"])},
        "rounds": n_rounds,
        "warmup_steps": warmup,
        "timed_steps_per_round": steps,
        "loss_reps_per_round": loss_reps,
        "rows": rows,
    }


def print_table(name: str, result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\n{name}: {cfg['teacher']} -> {cfg['student']}, batch {cfg['batch']}, "
        f"input {'x'.join(map(str, cfg['input']))},"
        f" C = {cfg['classes']} ({result['rounds']} rounds x {result['timed_steps_per_round']} steps)"
    )
    header = ["path", "step ms [range]", "step / general [range]", "loss ms", "saving vs general, from parts"]
    lines = [header]
    for cand, row in result["rows"].items():
        lo, hi = row["step_ratio_range"]
        s_lo, s_hi = row["saving_from_parts_range"]
        lines.append(
            [
                cand,
                f"{row['step_ms']:.2f} [{row['step_ms_range'][0]:.2f}-{row['step_ms_range'][1]:.2f}]",
                f"{row['step_ratio']:.3f} [{lo:.3f}-{hi:.3f}]",
                f"{row['loss_ms']:.3f}",
                f"{100 * row['saving_from_parts']:+.2f} % [{100 * s_lo:+.2f} to {100 * s_hi:+.2f}]",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=None, help="rounds per configuration (default: per config)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: results-cmkd-paths-<device>[-quick].json)"
    )
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"Expected `--threads` to be >= 1, but got {args.threads}.")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"Expected `--rounds` to be >= 1, but got {args.rounds}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("Expected a CUDA device for `--device cuda`, but torch.cuda.is_available() is False.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/cmkd_paths.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device, args.threads),
        "threshold": THRESHOLD,
        "configs": {},
    }
    start = time.perf_counter()
    for name in args.configs:
        results["configs"][name] = run_config(name, device, args.quick, args.rounds)
        print_table(name, results["configs"][name])
    results["wall_s"] = time.perf_counter() - start
    print(f"\nwall time {results['wall_s']:.0f} s; a path stays where it saves >= {100 * THRESHOLD:.0f} % of a step")
    # a --quick run never replaces the tracked full-run results
    out = args.out or HERE / f"results-cmkd-paths-{device.type}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
