"""Section C: ``DistillationModule`` under ``Trainer`` vs a plain PyTorch loop doing the same work.

Both runs use the same module construction (same seed, so the same initial student and teacher), the same
``DataLoader`` over the same composed-digits tensors (no shuffling), the same optimiser (the module's own
``configure_optimizers``), the same loss code (``module.compute_losses``), the same top-1/top-5 metric updates and
the same number of steps. What the plain loop does *not* do is Lightning's: the loop and its hooks, the optimiser
closure, ``self.log`` of every loss component, and the module's finiteness check (one host sync per step).

Throughput is measured over the same window in both: from the start of step ``warmup`` (batch already loaded) to
the end of the last step, data loading of the later batches included. Plain and Lightning runs alternate; the
ratio (Lightning images/s over plain images/s) is the median over rounds.

A third, diagnostic runner is the same Lightning run with ``self.log`` turned into a no-op (a subclass defined
here, not a library option): the gap between it and the full Lightning run is the cost of logging. A fourth is a
bare ``LightningModule`` whose ``training_step`` does exactly the plain loop's work (the same student, teacher,
``compute_losses`` and metric updates, nothing else) under the same ``Trainer``: the floor Lightning's own loop
sets, so that the module's share (bare / module) and Lightning's (plain / bare) are told apart.

The figure to quote is the *step-interleaved* ratio: one ``Trainer.fit`` with, after each of its steps, one step of
the plain loop on its own copy (``_PlainAlongside``), so that both see the same machine from one step to the next;
on a shared host the run-level pairs above move by +-10 %, the interleaved ratio by about +-1 %. A *phases* run of
the bare module (``_phases``) times its forward, backward and optimiser step through the ``LightningModule`` hooks
of those names, next to the plain loop's phases, to say where Lightning's own time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the sibling _timing module
from _timing import machine_info, now, paired_ratio  # noqa: E402
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from cmkd_lightning import DistillationModule
from cmkd_lightning.losses import CMKDLoss, KDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher
from datamodules.composed_digits import ComposedDigitsDataModule

TARGET = 0.95
BATCH = 128


class _Window(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start = now(self.device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.steps - 1:
            self.end = now(self.device)


class _NoLogModule(DistillationModule):
    """Diagnostic only: ``DistillationModule`` whose ``self.log`` does nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


class _BareModule(LightningModule):
    """Diagnostic only: the plain loop's step under ``Trainer``, without the module's guard, means or logging."""

    def __init__(self, module: DistillationModule) -> None:
        super().__init__()
        self.module = module

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        student_logits = self.module.student(x)
        teacher_logits = self.module.teacher_forward(x)
        terms = self.module.compute_losses(student_logits, teacher_logits, y)
        self.module.epoch_metrics["train_top1"].update(student_logits.detach(), y)
        self.module.epoch_metrics["train_top5"].update(student_logits.detach(), y)
        return terms["loss"]

    def configure_optimizers(self) -> Any:
        return self.module.configure_optimizers()


class _PhasedBare(_BareModule):
    """Diagnostic only: the bare module timing the plain loop's phases inside Lightning's step.

    ``training_step`` (forward, loss, metric updates), ``backward`` (``loss.backward()``) and ``optimizer_step``
    (``optimizer.step`` with Lightning's closure, which runs the other two, ``zero_grad`` and the hooks between them)
    through the ``LightningModule`` hooks of those names.
    """

    def __init__(self, module: DistillationModule, device: torch.device) -> None:
        super().__init__(module)
        self.clock = device
        self.phases: dict[str, list[float]] = {"training_step": [], "backward": [], "optimizer_step": []}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        start = now(self.clock)
        loss = super().training_step(batch, batch_idx)
        self.phases["training_step"].append(now(self.clock) - start)
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        start = now(self.clock)
        loss.backward(*args, **kwargs)
        self.phases["backward"].append(now(self.clock) - start)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        start = now(self.clock)
        optimizer.step(closure=optimizer_closure)
        self.phases["optimizer_step"].append(now(self.clock) - start)


def _module(loss: str, no_log: bool = False) -> DistillationModule:
    torch.manual_seed(0)
    if loss == "KD":
        losses, weights, ce = [KDLoss(temperature=4.0)], [0.9], 0.1
    else:
        losses, weights, ce = [CMKDLoss(temperature=4.0)], [1.0], 1.0
    cls = _NoLogModule if no_log else DistillationModule
    return cls(
        digits_student(100), digits_teacher(100), losses=losses, loss_weights=weights, ce_weight=ce,
        lr_scheduler=None,
    )


class _PlainLoop:
    """The plain PyTorch loop, one step at a time: its own module (same seed), optimiser and batch iterator."""

    def __init__(self, loss: str, loader: DataLoader, device: torch.device) -> None:
        self.module = _module(loss).to(device)
        self.module.train()
        self.optimizer = self.module.configure_optimizers()
        self.batches = iter(loader)
        self.device = device

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)
        return x.to(self.device), y.to(self.device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward passes, losses and metric updates: the total loss."""
        module = self.module
        student_logits = module.student(x)
        teacher_logits = module.teacher_forward(x)
        terms = module.compute_losses(student_logits, teacher_logits, y)
        module.epoch_metrics["train_top1"].update(student_logits.detach(), y)
        module.epoch_metrics["train_top5"].update(student_logits.detach(), y)
        return terms["loss"]

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.backward(self.forward(x, y))
        self.optimizer.step()


def _plain(loss: str, loader: DataLoader, warmup: int, steps: int, device: torch.device) -> float:
    loop = _PlainLoop(loss, loader, device)
    start = 0.0
    for i in range(steps):
        x, y = loop.next_batch()
        if i == warmup:
            start = now(device)
        loop.step(x, y)
    return now(device) - start


class _PhasedPlainLoop(_PlainLoop):
    """Diagnostic only: the plain loop timing its phases (batch fetch, forward + loss + metrics, zero_grad +
    backward, optimiser step)."""

    def __init__(self, loss: str, loader: DataLoader, device: torch.device) -> None:
        super().__init__(loss, loader, device)
        self.phases: dict[str, list[float]] = {"fetch": [], "forward": [], "backward": [], "optimizer": []}

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = now(self.device)
        batch = super().next_batch()
        self.phases["fetch"].append(now(self.device) - start)
        return batch

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        t0 = now(self.device)
        loss = self.forward(x, y)
        t1 = now(self.device)
        self.backward(loss)
        t2 = now(self.device)
        self.optimizer.step()
        t3 = now(self.device)
        for key, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
            self.phases[key].append(seconds)


class _PlainAlongside(Callback):
    """Step-interleaved timing: after each Lightning step, one step of the plain loop on its own copy.

    Lightning's step ``k`` is timed from the end of the plain step after step ``k - 1`` to the entry of this hook
    after step ``k`` (its batch fetch, hooks, forward, backward, optimiser step and the bookkeeping after step
    ``k - 1``); the plain step from this hook's entry to its end. The two alternate every ~15 ms, so a change in the
    machine's speed (other jobs, a noisy host) hits both alike, which run-level alternation cannot promise.
    """

    def __init__(self, loss: str, loader: DataLoader, device: torch.device, phased: bool = False) -> None:
        self.plain = (_PhasedPlainLoop if phased else _PlainLoop)(loss, loader, device)
        self.device = device
        self.lightning_s: list[float] = []  # Lightning's steps 1, 2, ... (step 0 has no start)
        self.plain_s: list[float] = []  # plain steps 0, 1, ...
        self._exit: float | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        entry = now(self.device)
        if self._exit is not None:
            self.lightning_s.append(entry - self._exit)
        with torch.enable_grad():
            self.plain.step(*self.plain.next_batch())
        self._exit = now(self.device)
        self.plain_s.append(self._exit - entry)


def _interleaved(
    loss: str, loader: DataLoader, warmup: int, steps: int, device: torch.device, bare: bool
) -> tuple[float, float]:
    """(plain seconds, Lightning seconds) over steps ``warmup`` to ``steps - 1``, the two interleaved step by step."""
    alongside = _PlainAlongside(loss, loader, device)
    trainer = _trainer(device, steps, [alongside])
    trainer.fit(_BareModule(_module(loss)) if bare else _module(loss), loader)
    return sum(alongside.plain_s[warmup:]), sum(alongside.lightning_s[warmup - 1 :])


def _trainer(device: torch.device, steps: int, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def _lightning(
    loss: str,
    loader: DataLoader,
    warmup: int,
    steps: int,
    device: torch.device,
    no_log: bool = False,
    bare: bool = False,
) -> tuple[float, float]:
    window = _Window(warmup, steps, device)
    trainer = _trainer(device, steps, [window])
    start = time.perf_counter()
    trainer.fit(_BareModule(_module(loss)) if bare else _module(loss, no_log), loader)
    return window.end - window.start, time.perf_counter() - start


def _phases(loss: str, loader: DataLoader, warmup: int, steps: int, device: torch.device) -> dict[str, float]:
    """Where Lightning's own time goes, ms per step (medians over steps ``warmup`` on), one step-interleaved run.

    ``closure_and_hooks``: Lightning's ``optimizer_step`` minus the work inside it that the plain loop also does
    (forward, backward, ``zero_grad`` + SGD step as the plain loop times them); ``loop``: the rest of Lightning's
    step minus the plain loop's batch fetch (fetcher, batch transfer, the loop's hooks and bookkeeping).
    """
    alongside = _PlainAlongside(loss, loader, device, phased=True)
    module = _PhasedBare(_module(loss), device)
    _trainer(device, steps, [alongside]).fit(module, loader)
    ms = {key: 1e3 * statistics.median(values[warmup:]) for key, values in module.phases.items()}
    ms.update({f"plain_{key}": 1e3 * statistics.median(v[warmup:]) for key, v in alongside.plain.phases.items()})
    ms["lightning_step"] = 1e3 * statistics.median(alongside.lightning_s[warmup - 1 :])
    ms["plain_step"] = 1e3 * statistics.median(alongside.plain_s[warmup:])
    plain_backward_and_optimizer = ms["plain_backward"] + ms["plain_optimizer"]
    ms["closure_and_hooks"] = ms["optimizer_step"] - ms["training_step"] - plain_backward_and_optimizer
    ms["loop"] = ms["lightning_step"] - ms["optimizer_step"] - ms["plain_fetch"]
    return ms


def _profile_lightning(loss: str, loader: DataLoader, steps: int, device: torch.device) -> dict[str, Any]:
    """cProfile of a Lightning run: top functions by own time, and the cumulative time of known suspects."""
    profiler = cProfile.Profile()
    trainer = _trainer(device, steps, [])
    module = _module(loss)
    profiler.enable()
    trainer.fit(module, loader)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    suspects = {
        "LightningModule.log": ("lightning/pytorch/core/module.py", "log"),
        "check_finite guard": ("cmkd_lightning/module/guard.py", "raise_if_not_finite"),
        "DistillationModule.compute_losses": ("cmkd_lightning/module/distillation.py", "compute_losses"),
        "DistillationModule.training_step": ("cmkd_lightning/module/distillation.py", "training_step"),
        "torchmetrics Metric.update (wrapped)": ("torchmetrics/metric.py", "wrapped_func"),
        "optimizer step (torch SGD.step)": ("torch/optim/sgd.py", "step"),
        "autograd backward": ("torch/autograd/__init__.py", "backward"),
        "Trainer.fit": ("lightning/pytorch/trainer/trainer.py", "fit"),
    }
    cumulative = {}
    for label, (path, func) in suspects.items():
        cum = [v[3] for (file, _, name), v in entries.items() if file.endswith(path) and name == func]
        cumulative[label] = {"s_total": sum(cum), "ms_per_step": 1e3 * sum(cum) / steps}
    return {
        "steps": steps,
        "total_own_time_s": total,
        "top_by_own_time": [
            {"function": f"{file.split('site-packages/')[-1]}:{line}({name})", "own_s": v[2], "cum_s": v[3],
             "calls": v[1]}
            for (file, line, name), v in top
        ],
        "cumulative": cumulative,
    }


def run(device: torch.device, quick: bool, threads: int, profile: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warmup, steps, rounds = (5, 40, 3) if quick else (10, 150, 5)
    dm = ComposedDigitsDataModule(num_digits=2, train_size=steps * BATCH, val_size=64, test_size=64, batch_size=BATCH)
    dm.setup("fit")
    loader = DataLoader(dm.datasets["train"], batch_size=BATCH, shuffle=False, num_workers=0)
    images = (steps - warmup) * BATCH
    result: dict[str, Any] = {
        "models": "digits_teacher -> digits_student (composed digits, 1x8x16, 100 classes)",
        "batch": BATCH,
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "runs": {},
        "profiles": {},
    }
    kinds = ("plain", "lightning", "lightning_no_log", "lightning_bare", "interleaved", "interleaved_bare")
    for loss in ("KD", "CMKD"):
        times: dict[str, list[float]] = {k: [] for k in kinds}
        alongside: dict[str, list[float]] = {k: [] for k in ("interleaved", "interleaved_bare")}  # their plain steps
        fit_t: list[float] = []
        for r in range(rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                if kind == "plain":
                    times[kind].append(_plain(loss, loader, warmup, steps, device))
                elif kind.startswith("interleaved"):
                    plain_s, lightning_s = _interleaved(loss, loader, warmup, steps, device, kind.endswith("bare"))
                    alongside[kind].append(plain_s)
                    times[kind].append(lightning_s)
                else:
                    window, whole = _lightning(
                        loss, loader, warmup, steps, device, kind == "lightning_no_log", kind == "lightning_bare"
                    )
                    times[kind].append(window)
                    if kind == "lightning":
                        fit_t.append(whole)
        med = {k: statistics.median(v) for k, v in times.items()}
        n_timed = steps - warmup
        # plain time / Lightning time = Lightning images/s / plain images/s
        ratio = paired_ratio(times["plain"], times["lightning"])
        interleaved = paired_ratio(alongside["interleaved"], times["interleaved"])
        interleaved_bare = paired_ratio(alongside["interleaved_bare"], times["interleaved_bare"])
        row = {
            "plain_images_per_s": images / med["plain"],
            "lightning_images_per_s": images / med["lightning"],
            "plain_step_ms": 1e3 * med["plain"] / n_timed,
            "lightning_step_ms": 1e3 * med["lightning"] / n_timed,
            "lightning_no_log_step_ms": 1e3 * med["lightning_no_log"] / n_timed,
            "overhead_ms_per_step": 1e3 * (med["lightning"] - med["plain"]) / n_timed,
            "logging_ms_per_step": 1e3 * (med["lightning"] - med["lightning_no_log"]) / n_timed,
            "no_log_ratio": paired_ratio(times["plain"], times["lightning_no_log"])["ratio"],
            "lightning_bare_step_ms": 1e3 * med["lightning_bare"] / n_timed,
            # Lightning's own floor (plain / bare) and the module's share on top of it (bare / module)
            "bare_ratio": paired_ratio(times["plain"], times["lightning_bare"])["ratio"],
            "module_over_bare": paired_ratio(times["lightning_bare"], times["lightning"])["ratio"],
            # the same ratios with the plain loop's steps interleaved with Lightning's, step by step, in one run
            "interleaved_ratio": interleaved["ratio"],
            "interleaved_ratio_lo": interleaved["ratio_lo"],
            "interleaved_ratio_hi": interleaved["ratio_hi"],
            "interleaved_bare_ratio": interleaved_bare["ratio"],
            "interleaved_module_over_bare": interleaved["ratio"] / interleaved_bare["ratio"],
            "interleaved_plain_step_ms": 1e3 * statistics.median(alongside["interleaved"]) / n_timed,
            "interleaved_lightning_step_ms": 1e3 * med["interleaved"] / n_timed,
            "interleaved_bare_step_ms": 1e3 * med["interleaved_bare"] / n_timed,
            "lightning_fit_wall_s": statistics.median(fit_t),
            "times_s": times,
            "interleaved_plain_times_s": alongside,
            **ratio,
            "target": TARGET,
        }
        phases = _phases(loss, loader, warmup, steps, device)
        row["phases_ms"] = phases
        row["lightning_closure_and_hooks_ms"] = phases["closure_and_hooks"]
        row["lightning_loop_ms"] = phases["loop"]
        result["runs"][loss] = row
        if profile and (row["ratio"] < TARGET or not quick):
            result["profiles"][loss] = _profile_lightning(loss, loader, steps, device)
    return result


# ---------------------------------------------------------------------------------------------------------------
# before / after: the same measurement on several revisions of the repository, side by side


_KEYS = (
    "ratio",
    "ratio_lo",
    "ratio_hi",
    "plain_step_ms",
    "lightning_step_ms",
    "logging_ms_per_step",
    "bare_ratio",
    "module_over_bare",
    "interleaved_ratio",
    "interleaved_ratio_lo",
    "interleaved_ratio_hi",
    "interleaved_bare_ratio",
    "interleaved_module_over_bare",
    "interleaved_plain_step_ms",
    "interleaved_lightning_step_ms",
    "lightning_closure_and_hooks_ms",
    "lightning_loop_ms",
)


def _measure_tree(
    tree: Path, device: str, quick: bool, threads: int, small: bool, harness: Path | None = None
) -> dict[str, Any]:
    """One :func:`run` of ``tree``'s copy of this file (or of ``harness``), on ``tree``'s package, in a new process.

    ``small``: batch 32 and the student's network as the teacher too, so a step costs a few milliseconds and the
    per-step cost of Lightning and the module is a visible part of it (the digits teacher alone takes tens of ms
    per batch of 128 on one CPU thread).
    """
    patch = (
        "bench.BATCH = 32\n"
        "bench.digits_teacher = lambda n: bench.digits_student(n)\n"
        if small
        else ""
    )
    code = (
        "import json, sys, torch\n"
        f"sys.path[:0] = [{str(harness or tree / 'benchmarks')!r}, {str(tree)!r}]\n"
        "import lightning_overhead as bench\n"
        f"{patch}"
        f"result = bench.run(torch.device({device!r}), {quick!r}, {threads}, False)\n"
        f"rows = {{loss: {{k: row[k] for k in {_KEYS!r} if k in row}} for loss, row in result['runs'].items()}}\n"
        "print('RESULT ' + json.dumps(rows))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"The benchmark of {tree} failed:\n{proc.stderr[-4000:]}")
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def compare(
    revisions: list[str],
    device: str,
    quick: bool,
    threads: int,
    rounds: int,
    small: bool = False,
    same_harness: bool = False,
) -> dict[str, Any]:
    """Section C on each git revision (``"."``: this checkout as it is), alternating revisions round by round.

    Each revision runs its own copy of this benchmark on its own package (a ``git archive`` of it), so a ratio is
    always "that revision's module under Trainer" over "the same plain loop", measured back to back; the rounds
    alternate the revisions so that a change in the machine's load hits all of them alike. ``same_harness``: every
    revision runs this checkout's copy of the benchmark (its runners, e.g. the step-interleaved one) on its own
    package.
    """
    repo = Path(__file__).resolve().parents[1]
    harness = repo / "benchmarks" if same_harness else None
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path] = {}
        for rev in revisions:
            if rev == ".":
                trees[rev] = repo
                continue
            commit = subprocess.run(
                ["git", "rev-parse", "--short", rev], cwd=repo, capture_output=True, text=True, check=True
            ).stdout.strip()
            trees[f"{rev} ({commit})"] = tree = Path(tmp) / commit
            tree.mkdir()
            archive = subprocess.run(["git", "archive", commit], cwd=repo, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        names = list(trees)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                per_round[name].append(_measure_tree(trees[name], device, quick, threads, small, harness))
    summary = {
        name: {
            loss: {key: statistics.median(row[loss][key] for row in rows) for key in _KEYS if key in rows[0][loss]}
            for loss in rows[0]
        }
        for name, rows in per_round.items()
    }
    return {
        "rounds": rounds,
        "quick": quick,
        "small": small,
        "same_harness": same_harness,
        "threads": threads,
        "summary": summary,
        "per_round": per_round,
    }


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/lightning_overhead.py --revisions <rev> . [--quick] [--rounds N] [--out FILE]``."""
    parser = argparse.ArgumentParser(description=compare.__doc__.splitlines()[0])
    parser.add_argument("--revisions", nargs="+", default=["."], help="git revisions; '.' is this checkout")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 steps x 3 rounds per revision and round")
    parser.add_argument("--small", action="store_true", help="batch 32, student-sized teacher: a few ms per step")
    parser.add_argument(
        "--same-harness", action="store_true", help="run this checkout's benchmark code on every revision's package"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)
    result = compare(
        args.revisions, args.device, args.quick, args.threads, args.rounds, args.small, args.same_harness
    )
    result["machine"] = machine_info(torch.device(args.device), args.threads)
    for name, losses in result["summary"].items():
        for loss, row in losses.items():
            print(
                f"{name:>28}  {loss:<4}  Lightning/plain throughput {row['ratio']:.3f} "
                f"[{row['ratio_lo']:.3f}, {row['ratio_hi']:.3f}]  plain {row['plain_step_ms']:.2f} ms/step  "
                f"Lightning {row['lightning_step_ms']:.2f} ms/step  of which self.log {row['logging_ms_per_step']:.2f}"
            )
            if "bare_ratio" in row:  # revisions older than the bare runner lack it
                print(
                    f"{'':>28}  {'':<4}  bare LightningModule/plain {row['bare_ratio']:.3f}  "
                    f"bare/DistillationModule {row['module_over_bare']:.3f}"
                )
            if "interleaved_ratio" in row:  # revisions older than the interleaved runner lack it
                print(
                    f"{'':>28}  {'':<4}  step-interleaved: Lightning/plain {row['interleaved_ratio']:.3f} "
                    f"[{row['interleaved_ratio_lo']:.3f}, {row['interleaved_ratio_hi']:.3f}]  "
                    f"bare/plain {row['interleaved_bare_ratio']:.3f}  "
                    f"DistillationModule/bare {row['interleaved_module_over_bare']:.3f}  "
                    f"(plain {row['interleaved_plain_step_ms']:.2f}, Lightning "
                    f"{row['interleaved_lightning_step_ms']:.2f} ms/step)"
                )
            if "lightning_loop_ms" in row:
                print(
                    f"{'':>28}  {'':<4}  Lightning's own time, bare module: closure and hooks around the optimiser "
                    f"step {row['lightning_closure_and_hooks_ms']:.2f} ms/step, the loop {row['lightning_loop_ms']:.2f}"
                    " ms/step"
                )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
