"""Section D: the teacher-logit cache. Per-step speed-up, build time, break-even runs and a 5-run sweep.

For each teacher -> student pair (resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2), batch 64, CIFAR-100 sized:

- a KD step with the live teacher (student forward, teacher forward under ``torch.no_grad()``, CE 0.1 + KD 0.9 at
  T = 4, backward, SGD step) and the same step reading the teacher's logits from a cache file (the lookup from the
  memory-mapped file is inside the timed region), measured side by side: the steps alternate (order flipped every
  pair), every step starts from the same student weights and a fresh optimiser, and the ratio is the median over
  pairs. ``teacher_share`` is a teacher forward at batch 64 (timed after each pair) over the live step;
- the build: ``build_cache`` (render the 162 views, teacher forward in ``inference_mode`` at ``BUILD_BATCH`` views
  per forward, write the file) on a few synthetic images, as seconds per image;
- from these: the break-even number of 240-epoch runs on CIFAR-100's 50,000 images,
  ``k* = t_build / (240 * (t_live - t_cached))`` per image, and the speed-up of a sweep of ``SWEEP_RUNS`` runs that
  share one cache, ``S * 240 * t_live / (S * 240 * t_cached + t_build)``.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _timing import now, paired_ratio

from cmkd_lightning.losses import KDLoss
from cmkd_lightning.models import create_model
from cmkd_lightning.teacher_cache import NUM_VIEWS, build_cache

PAIRS = {
    "resnet32x4 -> resnet8x4": ("resnet32x4", "resnet8x4", 2.2),
    "wrn_40_2 -> wrn_16_2": ("wrn_40_2", "wrn_16_2", 1.8),
}
BATCH, CLASSES, EPOCHS, TRAIN_IMAGES, SWEEP_RUNS = 64, 100, 240, 50_000, 5
BUILD_BATCH = NUM_VIEWS  # one image's views per forward: on one CPU thread larger batches were not faster per view


def _pair(teacher_name: str, student_name: str, device: torch.device, quick: bool, tmp: Path) -> dict[str, Any]:
    warmup, pairs, build_images = (1, 4, 2) if quick else (2, 10, 4)
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes=CLASSES).to(device).eval().requires_grad_(False)
    student = create_model(student_name, num_classes=CLASSES).to(device).train()
    images = np.random.default_rng(0).integers(0, 256, (build_images, 32, 32, 3), dtype=np.uint8)

    start = now(device)
    cache = build_cache(
        teacher, images, list(range(build_images)), tmp / f"{teacher_name}.tlc", dtype="float16",
        batch_size=BUILD_BATCH, device=device, progress=False,
    )  # fmt: skip
    build_per_image = (now(device) - start) / build_images

    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    index = torch.randint(0, build_images, (BATCH,), generator=g)
    view = torch.randint(0, NUM_VIEWS, (BATCH,), generator=g)
    kd = KDLoss(temperature=4.0)
    initial = copy.deepcopy(student.state_dict())

    def step(name: str) -> float:
        student.load_state_dict(initial)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        begin = now(device)
        opt.zero_grad(set_to_none=True)
        if name == "cached":
            zt = cache.lookup(index, view).to(device, non_blocking=True).float()
        zs = student(x)
        if name == "live":
            with torch.no_grad():
                zt = teacher(x)
        total = 0.1 * F.cross_entropy(zs, y) + 0.9 * kd(zs, zt, y)["loss"]
        total.backward()
        opt.step()
        return now(device) - begin

    names = ("live", "cached")
    for _ in range(warmup):
        for name in names:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    teacher_times = []
    for i in range(pairs):
        for name in names if i % 2 == 0 else tuple(reversed(names)):
            times[name].append(step(name))
        begin = now(device)
        with torch.no_grad():
            teacher(x)
        teacher_times.append(now(device) - begin)

    live, cached = statistics.median(times["live"]), statistics.median(times["cached"])
    teacher_fwd = statistics.median(teacher_times)
    live_img, cached_img = live / BATCH, cached / BATCH
    saved_per_run = EPOCHS * (live_img - cached_img)
    return {
        "teacher": teacher_name,
        "student": student_name,
        "step_s": {"live": live, "cached": cached},
        "step_s_all": times,
        "teacher_forward_s": teacher_fwd,
        "speedup": paired_ratio(times["live"], times["cached"]),
        "target": PAIRS[f"{teacher_name} -> {student_name}"][2],
        "teacher_share": teacher_fwd / live,
        "build_s_per_image": build_per_image,
        "build_images_timed": build_images,
        "build_batch_views": BUILD_BATCH,
        "build_s_cifar100_train": build_per_image * TRAIN_IMAGES,
        "run_s_cifar100_live": EPOCHS * TRAIN_IMAGES * live_img,
        "run_s_cifar100_cached": EPOCHS * TRAIN_IMAGES * cached_img,
        "break_even_runs": build_per_image / saved_per_run if saved_per_run > 0 else float("inf"),
        "sweep_runs": SWEEP_RUNS,
        "sweep_speedup": SWEEP_RUNS * EPOCHS * live_img / (SWEEP_RUNS * EPOCHS * cached_img + build_per_image),
        "warmup_steps": warmup,
        "pairs": pairs,
    }


def run(device: torch.device, quick: bool, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"batch": BATCH, "epochs": EPOCHS, "train_images": TRAIN_IMAGES, "pairs": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for label, (teacher_name, student_name, _) in PAIRS.items():
            out["pairs"][label] = _pair(teacher_name, student_name, device, quick, Path(tmp))
    out["seconds"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    import json
    import sys

    torch.set_num_threads(1)
    print(json.dumps(run(torch.device("cpu"), "--quick" in sys.argv, 1), indent=1))
