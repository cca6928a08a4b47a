"""Section B: one full distillation step, KD vs CMKD, resnet32x4 -> resnet8x4, batch 64, CIFAR-sized random data.

A step is: student forward, teacher forward under ``torch.no_grad()``, cross-entropy + distillation loss, backward,
SGD step (the CIFAR-100 recipe: lr 0.05, momentum 0.9, weight decay 5e-4). KD and CMKD steps alternate (the order
flips every pair); the ratio is the median over pairs. Every timed step starts from the same student weights and
a fresh optimiser state (restored outside the timed region, into the same tensors): letting each loss train its
own copy made the step time drift by a few per cent with the weights (measured: KD vs KD with other loss weights
came out 1.03x), as large as the target itself.

The two steps differ only in the loss, so the ratio is also estimated from its parts:
``1 + (t_CMKD - t_KD) / t_step_KD`` with the loss times of section A's 64 x 100 shape, measured in the same run.
On a busy shared CPU that estimate is far less noisy than the direct ratio of two multi-second steps.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from _timing import now, paired_ratio, timed_distillation_step

from cmkd_lightning.losses import CMKDLoss, DistillationLoss, KDLoss
from cmkd_lightning.models import create_model

TARGET = 1.03
BATCH, CLASSES = 64, 100


def run(device: torch.device, quick: bool, threads: int, loss_results: dict[str, Any] | None) -> dict[str, Any]:
    torch.set_num_threads(threads)
    warmup, pairs = (1, 4) if quick else (2, 12)
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=CLASSES).to(device).eval().requires_grad_(False)
    student = create_model("resnet8x4", num_classes=CLASSES).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)

    setups: dict[str, tuple[DistillationLoss, float, float]] = {
        "KD": (KDLoss(temperature=4.0), 0.1, 0.9),
        "CMKD": (CMKDLoss(temperature=4.0), 1.0, 1.0),
    }
    initial = copy.deepcopy(student.state_dict())

    def step(name: str) -> float:
        loss_fn, ce_weight, weight = setups[name]
        student.load_state_dict(initial)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return timed_distillation_step(student, teacher, opt, x, y, loss_fn, ce_weight, weight, device)

    for _ in range(warmup):
        for name in setups:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for i in range(pairs):
        order = list(setups) if i % 2 == 0 else list(reversed(setups))
        for name in order:
            times[name].append(step(name))

    # the teacher's share of a step (one extra measurement, for the record)
    start = now(device)
    with torch.no_grad():
        teacher(x)
    teacher_fwd = now(device) - start

    result: dict[str, Any] = {
        "model": "resnet32x4 -> resnet8x4",
        "batch": BATCH,
        "input": "3x32x32 random",
        "classes": CLASSES,
        "warmup_steps": warmup,
        "pairs": pairs,
        "step_s": {name: statistics.median(t) for name, t in times.items()},
        "step_s_all": times,
        "teacher_forward_s": teacher_fwd,
        "direct": {**paired_ratio(times["CMKD"], times["KD"]), "target": TARGET},
        "images_per_s": {name: BATCH / statistics.median(t) for name, t in times.items()},
    }
    if loss_results is not None and "64x100" in loss_results:
        row = loss_results["64x100"]
        extra = row["CMKD"]["median_s"] - row["KD"]["median_s"]
        result["from_parts"] = {
            "cmkd_minus_kd_loss_s": extra,
            "ratio": 1.0 + extra / result["step_s"]["KD"],
            "target": TARGET,
        }
    return result
