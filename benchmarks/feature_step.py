"""Full distillation step of each feature-based baseline as a ratio to KD (issue 22, the Fig. 7 cost comparison).

resnet32x4 -> resnet8x4 (the paper's CIFAR-100 pair), batch 64, random 3x32x32 inputs, 100 classes. A step goes
through :class:`~cmkd_lightning.DistillationModule` exactly as training does (student forward with the feature
hooks a loss asks for, teacher forward without grad, cross-entropy + loss, backward, SGD step over the student and
the loss's connectors). The methods run one after another in each round, the order rotated per round; a ratio is
the median over rounds of ``step time / KD's step time in the same round`` (with its range).

    python benchmarks/feature_step.py --rounds 5 --threads 1 [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch
from _timing import now

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import (
    ATLoss,
    CMKDLoss,
    CRDLoss,
    DistillationLoss,
    FitNetLoss,
    KDLoss,
    OFDLoss,
    ReviewKDLoss,
    RKDLoss,
)
from cmkd_lightning.models import create_model

BATCH, CLASSES, TRAIN_SIZE = 64, 100, 50_000

# each method with its configs' settings (examples/configs/cifar100/<method>/res32x4_res8x4.yaml) and the losses'
# recommended weights (the weights do not change the step's cost)
METHODS: dict[str, Callable[[], list[DistillationLoss]]] = {
    "KD": lambda: [KDLoss(temperature=4.0)],
    "FitNet": lambda: [FitNetLoss()],
    "AT": lambda: [ATLoss(p=2.0)],
    "RKD": lambda: [RKDLoss(distance_weight=25.0, angle_weight=50.0)],
    "OFD": lambda: [OFDLoss()],
    "CRD": lambda: [CRDLoss(num_samples=TRAIN_SIZE, num_negatives=16_384)],
    "ReviewKD": lambda: [ReviewKDLoss()],
    "ReviewKD + CMKD": lambda: [ReviewKDLoss(), CMKDLoss()],
}


def build(name: str, teacher: torch.nn.Module, initial: dict[str, Any], device: torch.device) -> DistillationModule:
    student = create_model("resnet8x4", num_classes=CLASSES)
    student.load_state_dict(initial)
    module = DistillationModule(student, teacher, losses=METHODS[name]())
    return module.to(device).train()


def run(device: torch.device, rounds: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=CLASSES)
    initial = create_model("resnet8x4", num_classes=CLASSES).state_dict()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    index = torch.randint(0, TRAIN_SIZE, (BATCH,), generator=g).to(device)
    contrast = torch.randint(0, TRAIN_SIZE, (BATCH, 16_385), generator=g).to(device)
    batch = (x, y, index, contrast)
    modules = {name: build(name, teacher, initial, device) for name in METHODS}
    optimizers = {
        name: torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=5e-4
        )
        for name, m in modules.items()
    }

    def step(name: str) -> float:
        module, opt = modules[name], optimizers[name]
        start = now(device)
        opt.zero_grad(set_to_none=True)
        module._step(batch, "train", 0)["loss"].backward()
        opt.step()
        return now(device) - start

    for name in METHODS:  # warm-up: allocations, connectors' first use
        step(name)
    names = list(METHODS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(step(name))
    rows = {}
    for name in names:
        ratios = [t / k for t, k in zip(times[name], times["KD"])]
        rows[name] = {
            "median_s": statistics.median(times[name]),
            "ratio": statistics.median(ratios),
            "ratio_lo": min(ratios),
            "ratio_hi": max(ratios),
        }
    return {"device": str(device), "threads": threads, "rounds": rounds, "batch": BATCH, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    result = run(torch.device(a.device), a.rounds, a.threads)
    print(f"| method | median s/step | ratio to KD, median [range] over {a.rounds} rounds |")
    print("|---|---|---|")
    for name, row in result["rows"].items():
        print(f"| {name} | {row['median_s']:.3f} | {row['ratio']:.2f} [{row['ratio_lo']:.2f}-{row['ratio_hi']:.2f}] |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
