"""A run killed (SIGKILL) after its second epoch and resumed with ``ckpt_path="last"`` (what ``cmkd fit --ckpt_path
last`` passes to ``Trainer.fit``) ends with the same RunSummary and TrainingCost totals as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

# One run in a fresh process: `epochs` epochs, killed at the start of epoch `kill_at` (0-based; -1: never), resumed
# from the last checkpoint with `resume`. Writes what the two callbacks hold at the end.
RUN = """
import json, os, signal, sys
from pathlib import Path
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from cmkd_lightning.callbacks import RunSummary, TrainingCost
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module

torch.set_num_threads(1)
root, epochs, kill_at, resume = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"

class Kill(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no hook, no save, no clean-up: a real kill

summary, cost = RunSummary(), TrainingCost()
callbacks = [summary, cost, Kill(), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)]
trainer = cpu_trainer(root, callbacks, max_epochs=epochs, enable_checkpointing=True, limit_train_batches=3,
                      limit_val_batches=2, deterministic=True)
trainer.fit(digits_module(), datamodule=digits_data(), ckpt_path="last" if resume else None)
(root / "result.json").write_text(json.dumps({"summary": summary.summary, "cost": cost.summary,
                                              "cost_history": cost.history, "epochs": summary.state_dict()["history"]}))
"""


def _run(root: Path, epochs: int, kill_at: int = -1, resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", RUN, str(root), str(epochs), str(kill_at), "1" if resume else "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    """A nested dict as ``{"a/b": leaf}`` (``pytest.approx`` compares flat mappings only)."""
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}/{key}").items()}


def _assert_same(have: object, want: object, where: str) -> None:
    """Equal leaves (floats to 1e-6 relative) of two nested dicts."""
    have, want = _flat(have), _flat(want)
    assert set(have) == set(want), where
    for leaf, value in want.items():
        assert have[leaf] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), where + leaf


@pytest.mark.slow  # three training processes
def test_killed_and_resumed_run_ends_with_the_uninterrupted_summary_and_cost(tmp_path):
    full = _run(tmp_path / "full", epochs=3)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(tmp_path / "resumed", epochs=3, kill_at=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "resumed" / "result.json").exists()
    saved = torch.load(tmp_path / "resumed" / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    (before,) = [state for key, state in saved.items() if key.startswith("RunSummary")]
    assert [r["epoch"] for r in before["history"]] == [1, 2]
    resumed = _run(tmp_path / "resumed", epochs=3, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = json.loads((tmp_path / "full" / "result.json").read_text())
    got = json.loads((tmp_path / "resumed" / "result.json").read_text())
    # The summary: best and last epoch with their accuracies, the last epoch's losses and diagnostics.
    for key in ("epochs", "best", "last", "losses", "diagnostics"):
        _assert_same(got["summary"].get(key), expected["summary"].get(key), key)
    _assert_same(dict(enumerate(got["epochs"])), dict(enumerate(expected["epochs"])), "epochs")  # every record
    assert [r["epoch"] for r in got["epochs"]] == [1, 2, 3] and got["summary"]["last"]["epoch"] == 3
    assert got["summary"]["seconds"] > before["seconds"]  # the wall time covers the part before the kill
    # The cost: every epoch of the run, with the samples and parameters of the uninterrupted run.
    assert [e["epoch"] for e in got["cost_history"]] == [1, 2, 3]
    for key in ("samples", "params_trainable", "params_frozen"):
        assert [e[key] for e in got["cost_history"]] == [e[key] for e in expected["cost_history"]], key
    for key in ("epochs", "params_trainable", "params_frozen", "world_size", "memory", "device"):
        assert got["cost"][key] == expected["cost"][key], key
    total = sum(e["epoch_time_s"] for e in got["cost_history"])
    assert got["cost"]["total_train_time_s"] == pytest.approx(total)
    assert got["cost"]["mean_samples_per_s"] == pytest.approx(sum(e["samples"] for e in got["cost_history"]) / total)
    # What the run printed at the end names all three epochs.
    assert "cmkd fit finished: 3 epoch(s)" in resumed.stdout
