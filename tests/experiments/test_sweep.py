"""``cmkd-sweep``: space parsing, config overrides, and real Optuna studies over a tiny ``cmkd`` config."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import yaml

from cmkd_lightning.experiments.sweep import _check_space, _parse_overrides, format_study, main, run_sweep, set_dotted

ROOT = Path(__file__).resolve().parents[2]
FIG8 = ROOT / "examples" / "sweeps" / "cmkd_beta_fig8.yaml"


def _csv_rows(tmp_path: Path, number: int) -> list[dict[str, str]]:
    version = tmp_path / "sw" / "fig8" / f"trial-{number}" / f"cmkd-trial{number}" / "version_0"
    with (version / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _tiny_config() -> dict:
    """The digits CMKD config, made tiny: 10 classes, 128 images, a fresh (untrained) zoo teacher, CSV logging."""
    config = yaml.safe_load((ROOT / "examples" / "configs" / "digits" / "cmkd.yaml").read_text())
    config["model"]["init_args"].pop("teacher_checkpoint")
    config["model"]["init_args"]["teacher_chance_factor"] = 0.0
    config["data"]["init_args"].update(num_digits=1, train_size=128, val_size=64, test_size=64, batch_size=64)
    config["trainer"].update(
        max_epochs=2,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x", "name": "cmkd"}},
    )
    return config


def test_set_dotted_walks_mappings_and_list_items():
    cfg = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    set_dotted(cfg, "a.b.1.c", 5)
    set_dotted(cfg, "a.new.key", "x")
    assert cfg == {"a": {"b": [{"c": 1}, {"c": 5}], "new": {"key": "x"}}}
    with pytest.raises(KeyError, match="existing list item"):
        set_dotted(cfg, "a.b.7.c", 1)


def test_space_errors_name_the_parameter():
    with pytest.raises(ValueError, match="non-empty `params`"):
        _check_space({})
    with pytest.raises(ValueError, match="`params.x` to be a mapping with `type`"):
        _check_space({"params": {"x": {"type": "normal"}}})
    with pytest.raises(ValueError, match="`params.x` \\(categorical\\) to list `choices`"):
        _check_space({"params": {"x": {"type": "categorical"}}})
    with pytest.raises(ValueError, match="give `low` and `high`"):
        _check_space({"params": {"x": {"type": "float", "low": 1}}})
    with pytest.raises(ValueError, match="only categorical `params` with `sampler: grid`"):
        _check_space({"sampler": "grid", "params": {"x": {"type": "int", "low": 1, "high": 3}}})
    with pytest.raises(ValueError, match="Expected `direction`"):
        _check_space({"direction": "up", "params": {"x": {"type": "int", "low": 1, "high": 3}}})


def test_overrides_parse_yaml_values():
    assert _parse_overrides(["--trainer.max_epochs=4", "--model.init_args.lr", "0.1", "--a.b=[1, 2]"]) == {
        "trainer.max_epochs": 4,
        "model.init_args.lr": 0.1,
        "a.b": [1, 2],
    }
    with pytest.raises(ValueError, match="--key=value"):
        _parse_overrides(["oops"])


def test_fig8_example_space_is_the_paper_grid():
    space = yaml.safe_load(FIG8.read_text())
    params = _check_space(space)
    assert params == {
        "model.init_args.losses.0.init_args.beta": {"type": "categorical", "choices": [1.0, 2.0, 3.0, 4.0, 5.0]}
    }
    assert space["fixed"] == {
        "model.init_args.ce_weight": 1.0,
        "model.init_args.losses.0.init_args.gamma": 1.0,
        "model.init_args.losses.0.init_args.preset": "paper",  # Eq. 16 as written
    }


@pytest.mark.slow
def test_grid_study_in_sqlite_runs_each_trial_as_a_logged_run_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = yaml.safe_load(FIG8.read_text())
    space["params"]["model.init_args.losses.0.init_args.beta"]["choices"] = [1.0, 3.0]
    study = run_sweep(_tiny_config(), space, trials=1, study_name="fig8", out=tmp_path / "sw")
    assert (tmp_path / "sw" / "fig8.db").is_file()
    # a second call continues the same study from its SQLite file
    study = run_sweep(_tiny_config(), space, trials=1, study_name="fig8", out=tmp_path / "sw")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.params["model.init_args.losses.0.init_args.beta"] for t in trials) == [1.0, 3.0]
    for t in trials:
        logged = [float(r["val/acc_top1"]) for r in _csv_rows(tmp_path, t.number) if r.get("val/acc_top1")]
        assert t.value == pytest.approx(max(logged))  # the objective, val/acc_top1_best, is the run's best epoch
        # each trial is a normal run: its own CSV log dir with the resolved config, beta and the fixed gamma in it
        version = tmp_path / "sw" / "fig8" / f"trial-{t.number}" / f"cmkd-trial{t.number}" / "version_0"
        config = yaml.safe_load((version / "config.yaml").read_text())
        cmkd = config["model"]["init_args"]["losses"][0]["init_args"]
        assert cmkd["beta"] == t.params["model.init_args.losses.0.init_args.beta"] and cmkd["gamma"] == 1.0
        assert "val/acc_top1" in (version / "metrics.csv").read_text()
    table = format_study(study)
    assert "beta" in table and "best: trial" in table
    shared = optuna.load_study(study_name="fig8", storage=f"sqlite:///{tmp_path / 'sw' / 'fig8.db'}")
    assert len(shared.trials) == 2


@pytest.mark.slow
def test_pruning_goes_through_optuna_lightning_integration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"params": {"model.init_args.optimizer.init_args.lr": {"type": "float", "low": 0.01, "high": 0.1}}}
    # a pruner that prunes at the first report (accuracy is never above 2): the trial must end PRUNED
    study = run_sweep(
        _tiny_config(), space, trials=1, out=tmp_path / "sw", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]


@pytest.mark.slow
def test_command_line_prints_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny_config()))
    main(["-c", str(config), "--space", str(FIG8), "--trials", "1", "--out", "sw", "--trainer.max_epochs=1"])
    printed = capsys.readouterr().out
    assert "beta" in printed and "COMPLETE" in printed and "best: trial 0" in printed
    assert (tmp_path / "sw" / "tiny-cmkd_beta_fig8.db").is_file()


def test_command_line_rejects_bad_trials(capsys):
    with pytest.raises(SystemExit):
        main(["-c", "x.yaml", "--space", "y.yaml", "--trials", "0"])
    assert "Expected `--trials` to be >= 1" in capsys.readouterr().err


def test_help_gives_every_default_and_the_space_format():
    from cmkd_lightning.experiments.sweep import build_parser
    from tests.experiments._help import assert_every_default_shown

    parser = build_parser()
    assert_every_default_shown(parser)
    text = parser.format_help()
    for key in ("metric:", "direction:", "sampler:", "pruner:", "params:", "fixed:"):
        assert key in text
    assert "<study name>.db" in text and "trial-<n>" in text


@pytest.mark.slow
def test_a_study_gives_the_caller_its_thread_count_and_warning_filters_back(tmp_path, monkeypatch):
    import warnings

    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMKD_CPU_THREADS", "1")  # what each trial's `cmkd` CLI sets
    space = {"params": {"model.init_args.optimizer.init_args.lr": {"type": "float", "low": 0.01, "high": 0.1}}}
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with warnings.catch_warnings():
            filters = list(warnings.filters)
            config = _tiny_config()
            config["trainer"]["max_epochs"] = 1
            study = run_sweep(config, space, trials=1, out=tmp_path / "sw", heartbeat_interval=None)
            assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
            assert warnings.filters == filters
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
