"""One W&B run per sweep trial: finished before the next trial, grouped by study, with the trial in its config."""

from __future__ import annotations

import optuna
import pytest

from cmkd_lightning.experiments.sweep import format_study, run_sweep
from tests.experiments.sweep._helpers import offline_runs, wandb_config

BETA = "model.init_args.losses.0.init_args.beta"


@pytest.mark.slow
def test_each_trial_is_its_own_wandb_run_and_the_best_is_linked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    space = {"sampler": "grid", "pruner": "none", "params": {BETA: {"type": "categorical", "choices": [1.0, 2.0, 3.0]}}}
    study = run_sweep(wandb_config(), space, trials=5, study_name="wb", out=tmp_path / "sw")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3  # the grid's 3 points, then it stops
    runs = offline_runs(tmp_path / "sw" / "wb")
    assert len(runs) == len(trials) == 3  # distinct run ids == trials (the bug: one run id in every trial folder)
    for t in trials:
        run_id = t.user_attrs["wandb_run_id"]
        assert runs[run_id]["trial_dir"] == f"trial-{t.number}"  # each run in its own trial's folder
        sweep = runs[run_id]["sweep"]
        assert sweep["study"] == "wb" and sweep["trial"] == t.number and sweep["params"] == t.params
        # the resolved config this trial's run stored is in this trial's run folder (not trial-0's config-<k>.yaml)
        saved = list((tmp_path / "sw" / "wb" / f"trial-{t.number}" / "wandb").glob("offline-run-*/files/config*.yaml"))
        assert [p.name for p in saved] == ["config.yaml"]
    best = study.user_attrs["best_trial"]
    assert best["number"] == study.best_trial.number
    assert best["wandb_run_id"] == study.best_trial.user_attrs["wandb_run_id"]
    assert f"W&B run {best['wandb_run_id']}" in format_study(study).splitlines()[-1]
