"""Device check of cmkd-lightning: CUDA tests, every config on synthetic data, 2-GPU DDP, the benchmark suite.

Usage::

    python scripts/gpu_check.py                      # on a CUDA machine: parts a-d, about 8 minutes at most
    python scripts/gpu_check.py --device cpu --limit 3 --parts b   # the CPU-runnable part, as CI runs it

Parts (each a row group of the printed table and of the JSON written to ``--out``):

a) ``pytest -m cuda``: the tests marked ``cuda`` (meta/CUDA no-sync tests, soft rank CUDA vs CPU, ...);
b) every config under ``examples/configs`` (or ``--limit`` of them, a representative sample first): ``fit`` with
   ``--trainer.fast_dev_run=true`` on synthetic data (``--data.init_args.synthetic=true``), teacher checkpoints
   dropped, no logger, one device, in the config's precision and in ``bf16-mixed``; run in this process (one
   interpreter for all configs); ``--full-stages`` adds ``validate`` and ``test``;
c) with two or more GPUs: 2-GPU DDP (NCCL) ``fit`` with ``fast_dev_run`` of one CIFAR-100 and one ImageNet config,
   each in its own ``cmkd`` process;
d) ``python benchmarks/run.py --device cuda --quick``.

Every part has a time budget (``--budget-s``, split over the parts); runs that would start after their part's
budget are reported as ``not run (time budget)``, so the whole check ends within the budget plus one run.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "examples" / "configs"
sys.path.insert(0, str(REPO))

#: One config per dataset x method family, tried first (and by CI on CPU): DKD with warm-up, ImageNet with DDP.
SAMPLE = (
    "digits/teacher.yaml",
    "digits/kd.yaml",
    "digits/dkd.yaml",
    "digits/dist.yaml",
    "digits/lskd.yaml",
    "digits/nkd.yaml",
    "digits/cmkd.yaml",
    "digits/dkd_cmkd.yaml",
    "cifar100/vanilla/resnet8x4.yaml",
    "cifar100/kd/res56_res20.yaml",
    "cifar100/dkd/res56_res20.yaml",
    "cifar100/dist/res32x4_res8x4.yaml",
    "cifar100/lskd/res32x4_res8x4.yaml",
    "cifar100/kd_ls/res32x4_res8x4.yaml",
    "cifar100/dkd_ls/res32x4_res8x4.yaml",
    "cifar100/nkd/res32x4_res8x4.yaml",
    "cifar100/cmkd/res56_res20.yaml",
    "cifar100/dkd_cmkd/res56_res20.yaml",
    "cifar100/fitnet/res32x4_res8x4.yaml",
    "cifar100/at/res32x4_res8x4.yaml",
    "cifar100/rkd/res32x4_res8x4.yaml",
    "cifar100/ofd/res32x4_res8x4.yaml",
    "cifar100/crd/res32x4_res8x4.yaml",
    "cifar100/reviewkd/res32x4_res8x4.yaml",
    "cifar100/ablation/res56_res20_pearson_zscore.yaml",
    "cifar100/motivation/kd_res20_res14.yaml",
    "cifar10/motivation/kd_res20_res14.yaml",
    "cifar100/cost/dkd_res32x4_res8x4.yaml",
    "cifar100/robustness/cmkd_res32x4_res8x4.yaml",
    "imagenet/vanilla/resnet18.yaml",
    "imagenet/kd/res34_res18.yaml",
    "imagenet/dkd/res34_res18.yaml",
    "imagenet/dist/res34_res18.yaml",
    "imagenet/lskd/res34_res18.yaml",
    "imagenet/nkd/res34_res18.yaml",
    "imagenet/cmkd/res34_res18.yaml",
    "imagenet/dkd_cmkd/res34_res18.yaml",
)
DDP_CONFIGS = ("cifar100/cmkd/res32x4_res8x4.yaml", "imagenet/cmkd/res34_res18.yaml")
PARTS = ("a", "b", "c", "d")
_BUDGET_SHARE = {"a": 0.12, "b": 0.58, "c": 0.12, "d": 0.18}


def all_configs() -> list[str]:
    """Every experiment config (``_base.yaml`` files excluded), the :data:`SAMPLE` first."""
    found = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml") if p.name[0] != "_")
    return [c for c in SAMPLE if c in found] + [c for c in found if c not in SAMPLE]


def config_files(rel: str) -> list[str]:
    """``-c <dataset>/_base.yaml -c <rel>`` (the base only where the dataset has one)."""
    base = CONFIG_DIR / rel.split("/")[0] / "_base.yaml"
    return (["-c", str(base)] if base.is_file() else []) + ["-c", str(CONFIG_DIR / rel)]


def _has_teacher_checkpoint(rel: str) -> bool:
    import yaml

    for path in config_files(rel)[1::2]:
        init = ((yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}).get("init_args") or {}
        if init.get("teacher_checkpoint"):
            return True
    return False


def smoke_overrides(
    rel: str, device: str, precision: str | None = None, small: bool | None = None, keep_logger: bool = False
) -> list[str]:
    """CLI overrides that run ``rel`` on synthetic data on one ``device`` without files, logger or teacher weights.

    ``keep_logger`` keeps the config's own logger (W&B for the shipped configs), as a user's run has it.

    ``small`` (default: on CPU) shrinks batches and ImageNet images so a step takes well under a second on CPU;
    on a GPU the configs' own batch sizes and image sizes are kept. The trainer strategy is the config's (DDP for
    ImageNet), with one device.
    """
    small = device == "cpu" if small is None else small
    dataset = rel.split("/")[0]
    args = [
        *([] if keep_logger else ["--trainer.logger=false"]),
        f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--data.init_args.synthetic=true",
        "--data.init_args.num_workers=0",
    ]
    if precision is not None:
        args.append(f"--trainer.precision={precision}")
    if dataset == "digits" and small:
        args += ["--data.init_args.train_size=64", "--data.init_args.val_size=32", "--data.init_args.test_size=32"]
        args += ["--data.init_args.batch_size=16"]
    elif dataset in ("cifar10", "cifar100") and small:
        args += ["--data.init_args.batch_size=8", "--data.init_args.synthetic_size=32"]
    elif dataset == "imagenet" and small:
        args += ["--data.init_args.batch_size=4", "--data.init_args.synthetic_size=16"]
        args += ["--data.init_args.image_size=64", "--data.init_args.resize_size=72"]
    if _has_teacher_checkpoint(rel):
        args.append("--model.init_args.teacher_checkpoint=null")
    return args


def _write_tiny_cifar100c(rel: str, workdir: Path) -> None:
    """Robustness configs read CIFAR-100-C in a callback (not a data module): give them 2 images per severity."""
    import numpy as np

    from datamodules import CIFAR100C_CORRUPTIONS, CIFAR100C_EXTRA_CORRUPTIONS

    text = "".join(Path(path).read_text() for path in config_files(rel)[1::2])
    if "CorruptionRobustness" not in text:
        return
    root = workdir / "data" / "CIFAR-100-C"  # the configs' relative root, under the run's throw-away directory
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(root / "labels.npy", np.arange(10, dtype=np.int64) % 100)
    for name in (*CIFAR100C_CORRUPTIONS, *CIFAR100C_EXTRA_CORRUPTIONS):
        np.save(root / f"{name}.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))


@contextlib.contextmanager
def _alarm(seconds: int | None) -> Iterator[None]:
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise TimeoutError(f"run exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_config(
    rel: str,
    device: str = "cpu",
    precision: str | None = None,
    stages: tuple[str, ...] = ("fit",),
    fast_dev_run: bool = True,
    steps: int = 2,
    timeout_s: int | None = None,
    small: bool | None = None,
    keep_logger: bool = False,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Build ``rel`` through the ``cmkd`` CLI in this process and run ``stages`` on synthetic data.

    With ``fast_dev_run`` every stage runs one batch; otherwise ``fit`` runs ``steps`` optimiser steps and
    validation / test one batch each. Returns ``{"status": "pass" | "fail", "seconds", "error"}``; the error is the
    last line of the exception (the full traceback goes to stderr).
    """
    import torch

    from cmkd_lightning.cli import build_cli

    args = [*config_files(rel), *smoke_overrides(rel, device, precision, small, keep_logger), *extra_args]
    if fast_dev_run:
        args.append("--trainer.fast_dev_run=true")
    else:
        args += [f"--trainer.max_steps={steps}", f"--trainer.limit_train_batches={steps}", "--trainer.max_epochs=1"]
        args += ["--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.num_sanity_val_steps=0"]
    start = time.perf_counter()
    result: dict[str, Any] = {"config": rel, "device": device, "precision": precision or "config", "stages": stages}
    # Lightning's DDP launcher, even on one device, writes MASTER_ADDR/PORT, NODE_RANK, LOCAL_RANK and WORLD_SIZE into
    # this process's environment. Left there, a `cmkd` started later from this process (part C's 2-GPU run) sees
    # LOCAL_RANK, takes its ranks for externally launched, never starts rank 1 and waits for it forever.
    cwd, argv, environment = os.getcwd(), sys.argv, dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        try:
            os.chdir(tmp)  # checkpoints and run configs land in a throw-away directory
            _write_tiny_cifar100c(rel, Path(tmp))
            sys.argv = ["cmkd"]
            with _alarm(timeout_s), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cli = build_cli(args, run=False)
                trainer, model, data = cli.trainer, cli.model, cli.datamodule
                for stage in stages:
                    getattr(trainer, stage)(model, datamodule=data)
                    if stage == "fit":
                        want = 1 if fast_dev_run else steps
                        if trainer.global_step != want:
                            made = trainer.global_step
                            raise RuntimeError(f"Expected {want} optimiser steps, but the trainer made {made}.")
                        loss = trainer.callback_metrics.get("train/loss")
                        if loss is None or not bool(torch.isfinite(loss)):
                            raise RuntimeError(f"Expected a finite train/loss after fit, but got {loss}.")
            result.update(status="pass", error="")
        except BaseException as err:  # noqa: BLE001 - every failure is a row of the table
            if isinstance(err, KeyboardInterrupt):
                raise
            traceback.print_exc()
            message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            result.update(status="fail", error=f"{type(err).__name__}: {message}"[:300])
        finally:
            os.chdir(cwd)
            sys.argv = argv
            os.environ.clear()
            os.environ.update(environment)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()  # the ImageNet configs use DDP, even on one device
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _run_subprocess(name: str, cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1, timeout_s), env=env)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        status = "pass" if proc.returncode == 0 else "fail"
        error = "" if status == "pass" else f"exit {proc.returncode}: {' | '.join(tail)}"[:400]
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    except subprocess.TimeoutExpired:
        status, error = "fail", f"timeout after {timeout_s:.0f} s"
    return {"name": name, "status": status, "seconds": round(time.perf_counter() - start, 2), "error": error}


# ---------------------------------------------------------------------------------------------------------------
# parts


def part_a(deadline: float) -> list[dict[str, Any]]:
    """The tests marked ``cuda``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    return [_run_subprocess("pytest -m cuda", cmd, deadline - time.monotonic())]


def part_b(args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    """Every selected config, in the config's precision and each of ``--precisions``, in this process."""
    configs = all_configs()
    if args.configs:
        configs = [c for c in configs if any(fnmatch.fnmatch(c, pattern) for pattern in args.configs)]
    if args.limit is not None:
        configs = configs[: args.limit]
    precisions: list[str | None] = [None] + [p for p in args.precisions if p != "config"]
    stages = ("fit", "validate", "test") if args.full_stages else ("fit",)
    rows = []
    for rel in configs:
        for precision in precisions:
            name = f"{rel} [{precision or 'config'}]"
            left = deadline - time.monotonic()
            if left <= 0:
                rows.append({"name": name, "status": "not run (time budget)", "seconds": 0.0, "error": ""})
                continue
            row = run_config(
                rel,
                device=args.device,
                precision=precision,
                stages=stages,
                fast_dev_run=not args.steps,
                steps=args.steps or 2,
                timeout_s=int(max(left, 30)),
            )
            rows.append({"name": name, **row})
            print(f"  {row['status']:4s} {row['seconds']:7.1f} s  {name}  {row['error']}", flush=True)
    return rows


def part_c(args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    """2-GPU DDP of :data:`DDP_CONFIGS`, each in its own ``cmkd`` process (Lightning starts the second rank)."""
    import torch

    if args.device != "cuda" or torch.cuda.device_count() < 2:
        return [{"name": "2-GPU DDP", "status": "not run (fewer than 2 GPUs)", "seconds": 0.0, "error": ""}]
    cmkd = shutil.which("cmkd") or ""
    base = [cmkd, "fit"] if cmkd else [sys.executable, "-m", "cmkd_lightning.cli", "fit"]
    rows = []
    for rel in DDP_CONFIGS:
        overrides = [a for a in smoke_overrides(rel, "cuda") if not a.startswith("--trainer.devices")]
        cmd = [*base, *config_files(rel), *overrides, "--trainer.devices=2", "--trainer.strategy=ddp"]
        cmd.append("--trainer.fast_dev_run=true")
        with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
            cmd += [f"--trainer.default_root_dir={tmp}"]
            rows.append(_run_subprocess(f"DDP x2 {rel}", cmd, deadline - time.monotonic()))
    return rows


def part_d(args: argparse.Namespace, deadline: float, out_dir: Path) -> list[dict[str, Any]]:
    """The benchmark suite in its quick mode; its JSON goes next to the check's."""
    cmd = [sys.executable, "benchmarks/run.py", "--device", args.device, "--quick"]
    cmd += ["--out", str(out_dir / "bench.json")]
    return [_run_subprocess(f"benchmarks/run.py --device {args.device} --quick", cmd, deadline - time.monotonic())]


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per check: part, name, result, seconds, error."""
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"\n{'part':4s}  {'check':{width}s}  {'result':22s}  {'seconds':>8s}  error")
    for r in rows:
        print(f"{r['part']:4s}  {r['name']:{width}s}  {r['status']:22s}  {r['seconds']:8.1f}  {r.get('error', '')}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail")}
    print(f"\n{counts['pass']} passed, {counts['fail']} failed, {len(rows) - sum(counts.values())} not run")


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts, print the table, write the JSON; exit code 1 when a check failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--limit", type=int, default=None, help="only the first K configs (the sample comes first)")
    p.add_argument("--configs", nargs="+", default=None, help="glob patterns of configs, e.g. 'cifar100/kd/*'")
    p.add_argument("--precisions", nargs="+", default=None, help="'config' and/or Lightning precisions")
    p.add_argument("--full-stages", action="store_true", help="also run validate and test after fit")
    p.add_argument("--steps", type=int, default=0, help="fit this many steps instead of fast_dev_run")
    p.add_argument("--budget-s", type=float, default=450.0, help="time budget of the whole check (default 450)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check" / "gpu_check.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("Expected a CUDA device for `--device cuda`, but torch.cuda.is_available() is False.")
    if args.precisions is None:
        args.precisions = ["config", "bf16-mixed"] if args.device == "cuda" else ["config"]
    start = time.monotonic()
    share = sum(_BUDGET_SHARE[part] for part in args.parts)
    deadline, rows = start, []
    for part in args.parts:
        deadline += args.budget_s * _BUDGET_SHARE[part] / share  # unused time carries over to the next part
        print(f"== part {part}", flush=True)
        if part == "a":
            got = part_a(deadline)
        elif part == "b":
            got = part_b(args, deadline)
        elif part == "c":
            got = part_c(args, deadline)
        else:
            got = part_d(args, deadline, args.out.parent)
        rows += [{"part": part, **row} for row in got]
    print_table(rows)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name(0)
    report = {"device": args.device, "environment": env, "seconds": round(time.monotonic() - start, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
