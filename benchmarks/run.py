"""Benchmark suite of cmkd-lightning: loss costs, a full distillation step, and Lightning's overhead.

Usage::

    python benchmarks/run.py [--device cpu|cuda] [--quick] [--threads N] [--sections a b c] [--no-profile]

Sections (all measured side by side within one run; ratios are medians over interleaved rounds):

a) forward + backward of every loss as a ratio to KD at 64x100, 128x1000 and 512x1000, the two soft-rank backends
   side by side, and CMKD's pieces (teacher statistics, sort, Pearson path, Spearman path);
b) a full training step, KD vs CMKD, resnet32x4 -> resnet8x4, batch 64, 3x32x32 random data, 100 classes;
c) ``DistillationModule`` under ``Trainer`` vs a plain PyTorch loop doing the same work, images per second;
d) the teacher-logit cache: KD step with cached vs live teacher logits (resnet32x4 -> resnet8x4, wrn_40_2 ->
   wrn_16_2, batch 64), the cache's build time per image, break-even runs and the speed-up of a 5-run sweep.

Prints tables and writes ``benchmarks/results-<device>.json`` (or ``--out``). Where a target is missed (and unless
``--no-profile``), the suite profiles the slow case and stores the top operations / functions in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lightning_overhead  # noqa: E402
import losses  # noqa: E402
import teacher_cache  # noqa: E402
import train_step  # noqa: E402
from _timing import machine_info  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps (< 5 min on a 2-core CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--sections", nargs="+", choices=("a", "b", "c", "d"), default=["a", "b", "c", "d"])
    p.add_argument("--no-profile", action="store_true", help="do not profile missed targets")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results-<device>.json)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"Expected `--threads` to be >= 1, but got {args.threads}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("Expected a CUDA device for `--device cuda`, but torch.cuda.is_available() is False.")
    return args


# ---------------------------------------------------------------------------------------------------------------
# printing


def _verdict(
    ratio: float, target: float | None, higher_is_better: bool = False, spread: tuple[float, float] | None = None
) -> str:
    """``met`` / ``MISSED`` on the median; ``inconclusive`` when ``spread`` (min, max over rounds) straddles it."""
    if target is None:
        return ""
    sign = ">=" if higher_is_better else "<="
    if spread is not None and spread[0] <= target <= spread[1]:
        return f"target {sign} {target:g}x: inconclusive (the rounds straddle it; median {ratio:.3f})"
    ok = ratio >= target if higher_is_better else ratio <= target
    return f"target {sign} {target:g}x: {'met' if ok else 'MISSED'}"


def _table(title: str, rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}"


def _ratio_cell(entry: dict[str, float]) -> str:
    return f"{entry['ratio']:.2f} [{entry['ratio_lo']:.2f}-{entry['ratio_hi']:.2f}]"


def _print_losses(res: dict[str, Any]) -> None:
    for shape, table in res["losses"].items():
        rows = [
            [name, _ms(e["median_s"]), _ms(e["min_s"]), _ratio_cell(e), _verdict(e["ratio"], e.get("target"))]
            for name, e in table.items()
        ]
        _table(f"[a] loss forward+backward, {shape}", rows, ["loss", "median ms", "min ms", "x KD [range]", ""])
    for shape, table in res.get("aten_ops", {}).items():
        rows = [[name, str(c["profiler"]), str(c["dispatched"]), str(c.get("numpy", "-"))] for name, c in table.items()]
        _table(f"[a] aten ops per forward+backward, {shape} (target for CMKD <= 150)", rows,
               ["loss", "profiler events", "dispatched", "NumPy calls"])
    for shape, table in res["soft_rank"].items():
        base = list(table)[-1]
        rows = [[name, _ms(e["median_s"]), _ratio_cell(e)] for name, e in table.items()]
        _table(f"[a] soft rank (z-scored, eps=1/C) forward+backward, {shape}", rows, ["backend", "median ms",
                                                                                          f"x {base}"])
    if not res["torchsort"]:
        print(f"  (torchsort backend skipped: {res['torchsort_note']})")
    for shape, table in res["cmkd_breakdown"].items():
        rows = [[name, _ms(e["median_s"]), _ratio_cell(e)] for name, e in table.items()]
        _table(f"[a] where CMKD's time goes, {shape}", rows, ["piece", "median ms", "x KD [range]"])
    for name, prof in res["profiles"].items():
        rows = [
            [op["name"], f"{op['self_ms_per_call']:.3f}", f"{100 * op['share']:.1f}", f"{op['calls_per_call']:g}"]
            for op in prof["ops"]
        ]
        tool = "cProfile" if prof["sort_by"].endswith("(cProfile)") else "torch.profiler"
        _table(f"[a] {tool}, {name} ({prof['total_ms_per_call']:.2f} ms self time per call)", rows,
               ["op", "self ms/call", "%", "calls/call"])


def _print_step(res: dict[str, Any]) -> None:
    rows = [[name, f"{res['step_s'][name]:.3f}", f"{res['images_per_s'][name]:.1f}"] for name in res["step_s"]]
    _table(f"[b] full step, {res['model']}, batch {res['batch']} ({res['pairs']} pairs after {res['warmup_steps']} "
           "warm-up steps each)", rows, ["loss", "median s/step", "images/s"])
    print(f"  teacher forward alone: {res['teacher_forward_s']:.3f} s")
    d = res["direct"]
    print(f"  CMKD/KD step, direct: {_ratio_cell(d)}  "
          f"{_verdict(d['ratio'], d['target'], spread=(d['ratio_lo'], d['ratio_hi']))}")
    if "from_parts" in res:
        fp = res["from_parts"]
        print(f"  CMKD/KD step, from parts: 1 + {_ms(fp['cmkd_minus_kd_loss_s'])} ms / KD step = {fp['ratio']:.4f}  "
              f"{_verdict(fp['ratio'], fp['target'])}")


def _print_lightning(res: dict[str, Any]) -> None:
    rows = [
        [loss, f"{r['plain_images_per_s']:.0f}", f"{r['lightning_images_per_s']:.0f}", f"{r['plain_step_ms']:.2f}",
         f"{r['lightning_step_ms']:.2f}", f"{r['lightning_no_log_step_ms']:.2f}", f"{r['overhead_ms_per_step']:.2f}",
         f"{r['logging_ms_per_step']:.2f}", _ratio_cell(r), f"{r['no_log_ratio']:.2f}",
         _verdict(r["ratio"], r["target"], higher_is_better=True)]
        for loss, r in res["runs"].items()
    ]
    _table(f"[c] Trainer vs plain loop, {res['models']}, batch {res['batch']}, {res['steps']} steps "
           f"({res['warmup_steps']} warm-up), {res['rounds']} rounds", rows,
           ["loss", "plain img/s", "Lightning img/s", "plain ms/step", "Lightning ms/step", "no-log ms/step",
            "overhead ms/step", "of which self.log", "Lightning/plain", "no-log/plain", ""])
    for loss, prof in res["profiles"].items():
        rows = [[k, f"{v['ms_per_step']:.3f}"] for k, v in prof["cumulative"].items()]
        _table(f"[c] cProfile of the Lightning run ({loss}): cumulative time of selected functions", rows,
               ["function", "ms/step"])
        rows = [[e["function"], f"{e['own_s']:.3f}", f"{e['cum_s']:.3f}", str(e["calls"])]
                for e in prof["top_by_own_time"][:10]]
        _table(f"[c] cProfile ({loss}): top functions by own time", rows, ["function", "own s", "cum s", "calls"])


def _print_cache(res: dict[str, Any]) -> None:
    rows = []
    for label, r in res["pairs"].items():
        sp = r["speedup"]
        rows.append([
            label, f"{r['step_s']['live']:.3f}", f"{r['step_s']['cached']:.3f}", _ratio_cell(sp),
            f"{100 * r['teacher_share']:.0f} %",
            _verdict(sp["ratio"], r["target"], higher_is_better=True, spread=(sp["ratio_lo"], sp["ratio_hi"])),
            f"{r['build_s_per_image']:.2f}", f"{r['build_s_cifar100_train'] / 3600:.1f}",
            f"{r['break_even_runs']:.2f}", f"{r['sweep_speedup']:.2f}",
        ])  # fmt: skip
    _table(f"[d] teacher-logit cache, KD step, batch {res['batch']} (live teacher vs cached float16 logits); build "
           f"and sweep figures for {res['train_images']} images x {res['epochs']} epochs", rows,
           ["pair", "live s/step", "cached s/step", "speed-up [range]", "teacher fwd / live step", "", "build s/image",
            "build h (CIFAR-100)", "break-even runs", "5-run sweep speed-up"])


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    out = args.out or HERE / f"results-{args.device}.json"
    results: dict[str, Any] = {
        "command": "python " + " ".join([str(Path(sys.argv[0])), *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine_info(device, args.threads),
        "seconds": {},
    }
    profile = not args.no_profile
    start = time.perf_counter()
    if "a" in args.sections:
        t0 = time.perf_counter()
        results["losses"] = losses.run(device, args.quick, args.threads, profile)
        results["seconds"]["a"] = time.perf_counter() - t0
        _print_losses(results["losses"])
    if "b" in args.sections:
        t0 = time.perf_counter()
        loss_rows = results.get("losses", {}).get("losses")
        results["train_step"] = train_step.run(device, args.quick, args.threads, loss_rows)
        results["seconds"]["b"] = time.perf_counter() - t0
        _print_step(results["train_step"])
    if "c" in args.sections:
        t0 = time.perf_counter()
        results["lightning"] = lightning_overhead.run(device, args.quick, args.threads, profile)
        results["seconds"]["c"] = time.perf_counter() - t0
        _print_lightning(results["lightning"])
    if "d" in args.sections:
        t0 = time.perf_counter()
        results["teacher_cache"] = teacher_cache.run(device, args.quick, args.threads)
        results["seconds"]["d"] = time.perf_counter() - t0
        _print_cache(results["teacher_cache"])
    results["seconds"]["total"] = time.perf_counter() - start
    out.write_text(json.dumps(results, indent=1))
    print(f"\nTotal {results['seconds']['total']:.0f} s; results written to {out}")


if __name__ == "__main__":
    main()
