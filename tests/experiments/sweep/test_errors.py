"""``cmkd-sweep``'s answers to bad space files, storage URLs and trial configurations: one line, file and key named."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import yaml

from cmkd_lightning.experiments.sweep import SweepError, TrialConfigError, main, resolve_storage_url, run_sweep
from tests.experiments.test_sweep import _tiny_config

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "examples" / "configs" / "digits" / "cmkd.yaml"
BETA = "model.init_args.losses.0.init_args.beta"


def _fails(capsys, *args: str) -> str:
    """Run cmkd-sweep; it must exit with status 2 and at most three lines on stderr, returned."""
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(CONFIG), "--trials", "1", *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert 1 <= len(err.splitlines()) <= 3, err
    assert "Traceback" not in err
    return err


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    space = _space(tmp_path, f"sampler: grid\nparams:\n  {BETA}: {{type: categorical, choices: [1.0, 2.0\n")
    err = _fails(capsys, "--space", str(space), "--out", str(tmp_path))
    assert str(space) in err and "syntax error at line" in err


def test_low_above_high_names_the_parameter_and_the_file(tmp_path, capsys):
    space = _space(tmp_path, "params:\n  model.init_args.optimizer.init_args.lr: {type: float, low: 0.5, high: 0.1}\n")
    err = _fails(capsys, "--space", str(space), "--out", str(tmp_path))
    assert "`params.model.init_args.optimizer.init_args.lr`" in err and "low=0.5 > high=0.1" in err
    assert str(space) in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parms: {}\n", "['parms']"),  # a misspelled top-level key
        (f"params:\n  {BETA}: {{type: float, low: 1, hihg: 2}}\n", "['hihg']"),
        (f"params:\n  {BETA}: {{type: float, low: 0, high: 2, log: true}}\n", "low > 0"),
        (f"sampler: grid\nparams:\n  {BETA}: {{type: float, low: 1, high: 2}}\n", "only categorical"),
        (f"pruner: hyperband\nparams:\n  {BETA}: {{type: float, low: 1, high: 2}}\n", "`pruner`"),
        ("- a list\n", "YAML mapping"),
    ],
)
def test_other_bad_spaces_name_the_key_and_the_file(tmp_path, capsys, text, expected):
    space = _space(tmp_path, text)
    err = _fails(capsys, "--space", str(space), "--out", str(tmp_path))
    assert expected in err and str(space) in err


def test_storage_with_an_unknown_database_is_one_line(tmp_path, capsys):
    space = ROOT / "examples" / "sweeps" / "cmkd_beta_fig8.yaml"
    err = _fails(capsys, "--space", str(space), "--storage", "foo://bar", "--out", str(tmp_path))
    assert "`--storage`" in err and "foo://bar" in err and "no dialect 'foo'" in err
    err = _fails(capsys, "--space", str(space), "--storage", "not a url", "--out", str(tmp_path))
    assert "'not a url'" in err


def test_postgresql_without_a_driver_says_which_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    space = ROOT / "examples" / "sweeps" / "cmkd_beta_fig8.yaml"
    url = "postgresql://me:secret@db.example:5432/studies"
    err = _fails(capsys, "--space", str(space), "--storage", url, "--out", str(tmp_path))
    assert "pip install 'cmkd-lightning[sweep]'" in err and "secret" not in err and "db.example" in err
    err = _fails(capsys, "--space", str(space), "--storage", url.replace("ql:", "ql+psycopg2:"), "--out", str(tmp_path))
    assert "psycopg2 is missing" in err


def test_postgresql_url_gets_the_installed_driver():
    pytest.importorskip("psycopg")
    assert resolve_storage_url("postgresql://u:p@localhost:5432/db") == "postgresql+psycopg://u:p@localhost:5432/db"
    assert resolve_storage_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(SweepError, match="no dialect 'foo'"):
        resolve_storage_url("foo://bar")


def test_misspelled_parameter_key_fails_its_trial_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"params": {"model.init_args.losses.0.init_args.bta": {"type": "categorical", "choices": [2.0]}}}
    with pytest.raises(TrialConfigError, match="Option 'bta' is not accepted") as exc:
        run_sweep(_tiny_config(), space, trials=2, study_name="typo", out=tmp_path / "sw")
    assert "model.init_args.losses.0.init_args.bta=2.0" in str(exc.value)
    study = optuna.load_study(study_name="typo", storage=f"sqlite:///{tmp_path / 'sw' / 'typo.db'}")
    (trial,) = study.get_trials()  # the sweep stops at the first trial that does not build
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "Option 'bta' is not accepted" in trial.user_attrs["fail_reason"]


def test_misspelled_parameter_key_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny_config()))
    space = _space(tmp_path, "params:\n  trainer.max_epoch: {type: categorical, choices: [1]}\n")
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(config), "--space", str(space), "--trials", "1", "--out", "sw"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) <= 3, err
    assert "trainer.max_epoch=1" in err and "does not accept option 'max_epoch'" in err


def test_a_database_that_does_not_answer_is_one_line(tmp_path, capsys):
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a free port: nothing listens there once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    space = ROOT / "examples" / "sweeps" / "cmkd_beta_fig8.yaml"
    url = f"postgresql://me:secret@127.0.0.1:{port}/studies"
    err = _fails(capsys, "--space", str(space), "--storage", url, "--out", str(tmp_path))
    assert "Expected to open the study database" in err and "Connection refused" in err and "secret" not in err


def test_grid_queue_skips_points_an_older_study_already_ran(tmp_path):
    from cmkd_lightning.experiments.sweep import open_study

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    dist = optuna.distributions.CategoricalDistribution([1.0, 2.0, 3.0])
    old.add_trial(optuna.trial.create_trial(params={BETA: 2.0}, distributions={BETA: dist}, value=0.5))
    space = {"sampler": "grid", "params": {BETA: {"type": "categorical", "choices": [1.0, 2.0, 3.0]}}}
    study = open_study(url, "old", space, heartbeat_interval=None)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["grid_point"] for t in waiting) == [0, 1]  # beta 1 and 3 queued, 2 not again
    open_study(url, "old", space, heartbeat_interval=None)  # a second worker queues nothing more
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 2
