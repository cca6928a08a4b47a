"""Shared pieces of the sweep tests: a tiny W&B-logged config and a reader of W&B's offline run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.experiments.test_sweep import _tiny_config

_SWEEP_CONFIG = re.compile(rb'\{"study":"[^"]*","trial":\d+,.*?"storage":"[^"]*"(,"retry_of":\d+)?\}')


def wandb_config(max_epochs: int = 1, train_size: int = 128) -> dict:
    """The tiny digits CMKD config of tests/experiments/test_sweep.py, logged by a WandbLogger (offline in the tests)."""
    config = _tiny_config()
    config["trainer"]["max_epochs"] = max_epochs
    config["data"]["init_args"]["train_size"] = train_size
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "cmkd-tests", "save_dir": "unused", "name": "cmkd"},
    }
    return config


def offline_runs(study_dir: Path) -> dict[str, dict]:
    """Every offline W&B run under ``<study_dir>/trial-<n>/wandb``: run id -> {trial folder, sweep config}.

    The run id is the suffix of W&B's ``offline-run-<time>-<id>`` folder (and of its ``run-<id>.wandb`` file); the
    sweep's entry of the run config is the JSON W&B stores verbatim in that file (``None`` where a killed run never
    wrote it).
    """
    runs: dict[str, dict] = {}
    for folder in sorted(study_dir.glob("trial-*/wandb/offline-run-*")):
        run_id = folder.name.rsplit("-", 1)[-1]
        if run_id in runs:
            raise AssertionError(f"run id {run_id} in both {runs[run_id]['trial_dir']} and {folder}")
        record = folder / f"run-{run_id}.wandb"
        data = record.read_bytes() if record.is_file() else b""  # a run killed as it started may not have it yet
        found = _SWEEP_CONFIG.search(data)
        runs[run_id] = {
            "trial_dir": folder.parents[1].name,
            "sweep": json.loads(found.group(0)) if found else None,
        }
    return runs
