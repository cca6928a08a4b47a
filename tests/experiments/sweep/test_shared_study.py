"""A study shared by several worker processes on a real PostgreSQL server (and on SQLite).

Workers start together on a fresh database, a worker is killed in the middle of a trial, and the study must end
with every grid point run once, the killed trial FAILED and run once more, one W&B run per trial, and a later
worker able to resume it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.experiments.sweep._helpers import offline_runs, wandb_config

BETA = "model.init_args.losses.0.init_args.beta"
GRID = [1.0, 2.0, 3.0, 4.0]
SPACE = {"sampler": "grid", "pruner": "none", "params": {BETA: {"type": "categorical", "choices": GRID}}}
ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


# One worker's start: load the study (sweep.py loaded from its file: no torch import, so the six processes reach
# the barrier within seconds and then race for real), after a barrier file appears.
_OPEN = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("cmkd_sweep", {path!r})
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)
import optuna, sqlalchemy  # imported before the barrier
pathlib.Path(sys.argv[2] + "." + sys.argv[3]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.005)
sweep.open_study(sys.argv[1], "race", {space!r}, heartbeat_interval=1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_many_workers_start_together_on_a_fresh_database(backend, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'race.db'}"
    go = tmp_path / "go"
    script = _OPEN.format(path=str(ROOT / "cmkd_lightning" / "experiments" / "sweep.py"), space=SPACE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, str(go), str(i)], env=_env(), stderr=subprocess.PIPE, text=True
        )
        for i in range(6)
    ]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("go.*"))) < len(procs):  # every process is at the barrier
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e for e in errors if "Error" in e)
    study = optuna.load_study(study_name="race", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    queued = study.get_trials()
    # every grid point queued exactly once, however many workers created the study at the same moment
    assert sorted(t.user_attrs["grid_point"] for t in queued) == [0, 1, 2, 3]
    assert {t.state for t in queued} == {optuna.trial.TrialState.WAITING}


def _worker(config: Path, space: Path, url: str, out: Path, cwd: Path, trials: int = 4) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cmkd_lightning.experiments.sweep", "-c", str(config), "--space", str(space)]
    cmd += ["--trials", str(trials), "--storage", url, "--study-name", "shared", "--out", str(out)]
    cmd += ["--heartbeat-interval", "1", "--grace-period", "3"]
    log = (cwd / f"worker-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_three_workers_on_postgresql_with_one_killed_mid_trial(postgres_url, tmp_path):
    config, space, out = tmp_path / "tiny.yaml", tmp_path / "grid.yaml", tmp_path / "sw"
    config.write_text(yaml.safe_dump(wandb_config(max_epochs=3, train_size=256)))
    space.write_text(yaml.safe_dump(SPACE))
    workers = [_worker(config, space, postgres_url, out, tmp_path) for _ in range(3)]
    study = None
    victim = None
    deadline = time.monotonic() + 300
    while victim is None:
        assert time.monotonic() < deadline, "no trial reached its W&B run within 300 s"
        assert any(w.poll() is None for w in workers), "every worker ended before one could be killed"
        if study is None:
            try:
                study = optuna.load_study(study_name="shared", storage=postgres_url.replace("ql:", "ql+psycopg:"))
            except KeyError:  # not created yet
                time.sleep(0.2)
                continue
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            running = [w for w in workers if w.pid == pid and w.poll() is None]
            # kill it in the middle of training: once the trial's W&B run exists
            if running and list((tmp_path / t.user_attrs["run_dir"]).glob("wandb/offline-run-*")):
                os.kill(pid, signal.SIGKILL)
                victim = t.number
                killed_at = time.monotonic()
                break
        time.sleep(0.05)
    for w in workers:
        w.wait(timeout=300)
    assert sorted(w.returncode for w in workers) == [-signal.SIGKILL, 0, 0]
    # Resume: a later worker fails the dead trial once its heartbeat is older than the grace period, runs it once
    # more, and runs whatever the queue still holds.
    time.sleep(max(0.0, killed_at + 4 - time.monotonic()))
    resumed = _worker(config, space, postgres_url, out, tmp_path)
    assert resumed.wait(timeout=300) == 0, Path(resumed.args[0]).name

    trials = study.get_trials()
    state = {t.number: t.state for t in trials}
    assert state[victim] == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == trials[victim].params
    # a trial another worker created after the last point was taken never ran (no parameters, FAILED with why)
    idle = [t for t in trials if str(t.user_attrs.get("fail_reason", "")).startswith("no grid point left")]
    assert all(not t.params and t.state == optuna.trial.TrialState.FAIL for t in idle)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params[BETA] for t in done) == GRID  # every grid point exactly once
    assert len(trials) == len(GRID) + 1 + len(idle)  # nothing else recorded, nothing left RUNNING or WAITING
    # one W&B run per trial that ran, each in its own trial folder (offline_runs refuses a run id seen twice)
    runs = offline_runs(out / "shared")
    assert len(runs) == len(done) + 1
    for t in done:
        assert runs[t.user_attrs["wandb_run_id"]]["trial_dir"] == f"trial-{t.number}"
    assert [r["trial_dir"] for r in runs.values()].count(f"trial-{victim}") == 1
