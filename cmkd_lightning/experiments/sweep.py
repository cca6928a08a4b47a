r"""``cmkd-sweep``: Optuna hyper-parameter search over any ``cmkd`` config, one normally logged run per trial.

A *space* file names the config keys to search (dotted paths into the ``cmkd fit`` config, list items by index),
their distributions, the metric to optimise and, optionally, the sampler and pruner::

    metric: val/acc_top1_best          # any metric DistillationModule logs (default)
    direction: maximize                # default
    sampler: grid                      # grid (categorical spaces only) | tpe (default) | random
    pruner: median                     # median (default) | none
    params:
      model.init_args.losses.0.init_args.beta: {type: categorical, choices: [1.0, 2.0, 3.0, 4.0, 5.0]}
      model.init_args.optimizer.init_args.lr: {type: float, low: 0.01, high: 0.1, log: true}
    fixed:                             # set in every trial
      model.init_args.losses.0.init_args.gamma: 1.0

Every trial builds the config through the same LightningCLI as ``cmkd fit`` (so a trial *is* a normal run: its
logger, callbacks and resolved config are the config's, W&B offline when no API key is set), under
``<out>/<study>/trial-<n>``, with the trial number appended to the logger's run name. With a ``WandbLogger`` each
trial is its own W&B run (finished before the next trial starts), grouped under the study's name, with the study,
the trial number and its parameters in the run's config; the trial records the run's id and folder, and the study
records its best trial (``study.user_attrs["best_trial"]``).

Studies live in SQLite at ``<out>/<study>.db`` unless ``--storage`` gives an RDB URL (``postgresql://...`` with the
``sweep`` extra's psycopg driver), which lets any number of workers on several machines share one study; they may
all start at once on a fresh database. Each running trial sends a heartbeat: a trial whose worker died is marked
FAILED after ``grace_period`` seconds and run once more (Optuna's ``RetryHeartbeatStaleTrialCallback``). A grid
study puts every grid point in the study's queue once, so concurrent workers never run a point twice. Unpromising
trials are pruned after each validation epoch through Optuna's Lightning integration
(``optuna_integration.PyTorchLightningPruningCallback``, monitoring ``pruning_metric``, default ``val/acc_top1``).
See docs/SWEEPS.md for a study shared by several machines.

Example::

    cmkd-sweep -c examples/configs/digits/cmkd.yaml --space examples/sweeps/cmkd_beta_fig8.yaml --trials 5 \\
        --trainer.max_epochs=4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cmkd_lightning.errors import ConfigFileNotFoundError, InvalidArgumentError, UnknownKeyError
from cmkd_lightning.utilities.optional import MissingExtraError

_PARAM_TYPES = ("categorical", "int", "float")
_SAMPLERS = ("tpe", "random", "grid")
_PRUNERS = ("median", "none")
_SPACE_KEYS = ("metric", "direction", "sampler", "pruner", "params", "fixed")
_SPEC_KEYS = {"categorical": ("type", "choices"), "int": ("type", "low", "high", "step", "log")}
_SPEC_KEYS["float"] = _SPEC_KEYS["int"]
# Study and trial attributes this module writes (user attributes: visible in `optuna` tools and dashboards).
_GRID_QUEUED = "cmkd_grid_queued"
_LOCK_ID = 0x636D6B64  # "cmkd": the PostgreSQL advisory lock held while a worker creates the schema and the study


DESCRIPTION = """\
Optuna hyper-parameter search over any `cmkd fit` config, one normally logged run per trial.

The space file names the config keys to search (dotted paths, list items by index) and their distributions:
  metric: val/acc_top1_best     # the value to optimise (this default)
  direction: maximize           # maximize (default) | minimize
  sampler: grid                 # tpe (default) | random | grid (categorical params only)
  pruner: median                # median (default) | none
  params:
    model.init_args.losses.0.init_args.beta: {type: categorical, choices: [1.0, 2.0, 3.0, 4.0, 5.0]}
    model.init_args.optimizer.init_args.lr: {type: float, low: 0.01, high: 0.1, log: true}
  fixed:                        # set in every trial
    model.init_args.losses.0.init_args.gamma: 1.0

files under --out: <study name>.db (the study, unless --storage) and <study name>/trial-<n>/ (each trial's run)"""


class SweepError(InvalidArgumentError):
    """A space file, storage URL or trial configuration that cannot be used; the message says which and why."""


class TrialConfigError(SweepError):
    """A trial's configuration does not build (e.g. a misspelled parameter key); the trial is recorded FAILED."""


def _require_optuna(integration: bool = False) -> Any:
    try:
        import optuna

        if integration:  # imports Lightning: only where trials run
            from optuna_integration import PyTorchLightningPruningCallback  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"cmkd-sweep needs Optuna and its Lightning integration ({err.name} is missing): "
            "pip install 'cmkd-lightning[sweep]'"
        ) from err
    return optuna


def _load_yaml(source: str | Path | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file():
        raise ConfigFileNotFoundError(f"Expected `{what}` to be a YAML file, but {str(path)!r} does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SweepError(
            f"Expected `{what}` {path} to be valid YAML, but it has a syntax error{where}: {problem}."
        ) from None
    if not isinstance(loaded, dict):
        raise SweepError(f"Expected `{what}` {path} to hold a YAML mapping, but got {type(loaded).__name__}.")
    return loaded


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b][0][c] = value`` for ``key = "a.b.0.c"``, creating missing mappings.

    Example:
        >>> cfg = {"model": {"init_args": {"losses": [{"init_args": {"beta": 4.0}}]}}}
        >>> set_dotted(cfg, "model.init_args.losses.0.init_args.beta", 2.0)
        >>> cfg["model"]["init_args"]["losses"][0]["init_args"]["beta"]
        2.0
    """
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UnknownKeyError(
                    f"Expected `{key}` to index an existing list item at {'.'.join(parts[: i + 1])!r}."
                )
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UnknownKeyError(
                f"Expected `{key}` to index an existing list item, but the list has {len(node)} items."
            )
        node[int(last)] = value
    else:
        node[last] = value


def _check_space(space: dict[str, Any], source: str = "the space") -> dict[str, dict[str, Any]]:
    """Validate a space mapping; every error names the parameter and ``source`` (the file)."""
    unknown = sorted(set(space) - set(_SPACE_KEYS))
    if unknown:
        raise SweepError(f"Expected the space's keys to be among {_SPACE_KEYS}, but got {unknown} ({source}).")
    params = space.get("params")
    if not isinstance(params, dict) or not params:
        raise SweepError(
            f"Expected the space to have a non-empty `params` mapping (config key -> distribution) ({source})."
        )
    for key, spec in params.items():
        where = f"`params.{key}`"
        if not isinstance(spec, dict) or spec.get("type") not in _PARAM_TYPES:
            raise SweepError(
                f"Expected {where} to be a mapping with `type` in {_PARAM_TYPES}, but got {spec!r} ({source})."
            )
        kind = spec["type"]
        extra = sorted(set(spec) - set(_SPEC_KEYS[kind]))
        if extra:
            raise SweepError(
                f"Expected {where} ({kind}) to use only the keys {_SPEC_KEYS[kind]}, but got {extra} ({source})."
            )
        if kind == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise SweepError(f"Expected {where} (categorical) to list `choices`, but got {spec!r} ({source}).")
            continue
        if "low" not in spec or "high" not in spec:
            raise SweepError(f"Expected {where} ({kind}) to give `low` and `high`, but got {spec!r} ({source}).")
        for bound in ("low", "high"):
            if isinstance(spec[bound], bool) or not isinstance(spec[bound], (int, float)):
                raise SweepError(f"Expected {where} `{bound}` to be a number, but got {spec[bound]!r} ({source}).")
        if spec["low"] > spec["high"]:
            raise SweepError(
                f"Expected {where} to have low <= high, but got low={spec['low']} > high={spec['high']} ({source})."
            )
        if spec.get("log") and spec["low"] <= 0:
            raise SweepError(f"Expected {where} (log: true) to have low > 0, but got low={spec['low']} ({source}).")
    checks = (("direction", "maximize", ("maximize", "minimize")), ("sampler", "tpe", _SAMPLERS))
    for name, default, allowed in (*checks, ("pruner", "median", _PRUNERS)):
        if space.get(name, default) not in allowed:
            raise SweepError(f"Expected `{name}` to be one of {allowed}, but got {space[name]!r} ({source}).")
    if space.get("sampler") == "grid" and any(s["type"] != "categorical" for s in params.values()):
        bad = [k for k, s in params.items() if s["type"] != "categorical"]
        raise SweepError(f"Expected only categorical `params` with `sampler: grid`, but {bad} are not ({source}).")
    fixed = space.get("fixed")
    if fixed is not None and not isinstance(fixed, dict):
        raise SweepError(f"Expected `fixed` to be a mapping (config key -> value), but got {fixed!r} ({source}).")
    return params


def suggest(trial: Any, params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw one value per parameter from the trial (Optuna's ``suggest_*``), keyed by config path."""
    values = {}
    for key, spec in params.items():
        if spec["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(
                key,
                int(spec["low"]),
                int(spec["high"]),
                step=int(spec.get("step", 1)),
                log=bool(spec.get("log", False)),
            )
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=bool(spec.get("log", False))
            )
    return values


def resolve_storage_url(storage: str) -> str:
    """Check an Optuna RDB URL before any worker uses it; ``postgresql://`` gets the installed psycopg driver.

    Raises :class:`SweepError` (one line, password hidden) for a URL SQLAlchemy cannot parse, a database it does
    not know (``foo://bar``) or a driver that is not installed.

    Example:
        >>> resolve_storage_url("sqlite:///runs/sweep/study.db")
        'sqlite:///runs/sweep/study.db'
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(storage)
    except ArgumentError:
        raise SweepError(
            f"Expected `--storage` to be a database URL such as sqlite:///study.db or "
            f"postgresql://user:password@host:5432/db, but got {storage!r}."
        ) from None
    shown = url.render_as_string(hide_password=True)
    if url.drivername == "postgresql":  # SQLAlchemy 2.0 maps it to psycopg2, 2.1 to psycopg (3): use what is here
        for driver, module in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            with contextlib.suppress(ImportError):
                __import__(module)
                url = url.set(drivername=f"postgresql+{driver}")
                break
        else:
            raise SweepError(
                f"Expected a PostgreSQL driver for `--storage` {shown}, but neither psycopg nor psycopg2 is "
                "installed: pip install 'cmkd-lightning[sweep]' (it brings psycopg)."
            )
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise SweepError(
            f"Expected `--storage` to name a database SQLAlchemy supports (sqlite, postgresql, mysql, ...), but got "
            f"{shown} (no dialect {url.drivername!r})."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise SweepError(
            f"Expected the database driver of `--storage` {shown} to be installed, but {err.name or err} is "
            f"missing (pip install it, or for PostgreSQL: pip install 'cmkd-lightning[sweep]')."
        ) from None
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def _storage_lock(url: str) -> Iterator[None]:
    """One worker at a time creates the schema and the study: a PostgreSQL advisory lock, a file lock for SQLite.

    Without it, workers started together on a fresh database race on Optuna's schema (``IntegrityError`` on
    ``alembic_version``) and on queueing a grid study's points.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            try:
                conn = engine.connect()
            except OperationalError as err:
                reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err).splitlines()[0]
                shown = parsed.render_as_string(hide_password=True)
                raise SweepError(f"Expected to open the study database {shown}, but it failed: {reason}") from None
            with conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_ID})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_ID})
        finally:
            engine.dispose()
    elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        import fcntl

        lock = Path(f"{parsed.database}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:  # other databases: no lock; `_open_storage` retries a lost race instead
        yield


def _retry_callback() -> Any:
    """Optuna's callback that queues a stale trial once more (renamed in Optuna 4.9; the old name is deprecated)."""
    import optuna

    return (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )


def _open_storage(url: str, heartbeat_interval: int | None, grace_period: int | None) -> Any:
    """Optuna's RDBStorage with heartbeats and one retry of a trial whose worker died (call under the lock)."""
    optuna = _require_optuna()
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or 2 * heartbeat_interval,
        }
        # Optuna >= 4.9 names the callback `heartbeat_stale_trial_callback` (and deprecates the older name).
        import inspect

        name = "heartbeat_stale_trial_callback"
        if name not in inspect.signature(optuna.storages.RDBStorage).parameters:
            name = "failed_trial_callback"  # pragma: no cover - Optuna < 4.9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs[name] = _retry_callback()(max_retry=1)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 5
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            # A lost race on the schema (another worker created it at the same moment) or a locked SQLite file:
            # look again. A database that does not answer is reported at once.
            reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err).splitlines()[0]
            lost_race = not isinstance(err, OperationalError) or "locked" in reason
            if not lost_race or attempt == attempts:
                shown = make_url(url).render_as_string(hide_password=True)
                raise SweepError(f"Expected to open the study database {shown}, but it failed: {reason}") from None
            time.sleep(0.5 * attempt)
    raise SweepError(f"Expected to open the study database after {attempts} attempts.")  # pragma: no cover


def _name_trial_logger(config: dict[str, Any], study_name: str, number: int, trial_dir: Path) -> None:
    """Append ``-trial<n>`` to the logger's run name, save under the trial's folder, group W&B runs by study."""
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    trainer["default_root_dir"] = str(trial_dir)
    logger = trainer.get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    for entry in loggers:
        if not isinstance(entry, dict) or "class_path" not in entry:
            continue
        init = entry.setdefault("init_args", {}) or {}
        entry["init_args"] = init
        base = init.get("name") or study_name
        init["name"] = f"{base}-trial{number}"
        if entry["class_path"].endswith("WandbLogger"):
            init["group"] = study_name
            init["save_dir"] = str(trial_dir)
            init.pop("id", None)  # a fixed run id would make every trial the same W&B run
            init.pop("version", None)
        elif "save_dir" in init or entry["class_path"].endswith(("CSVLogger", "TensorBoardLogger")):
            init["save_dir"] = str(trial_dir)


def _short_reason(err: BaseException) -> str:
    """The most specific line of a jsonargparse error (``Option 'bta' is not accepted``), else its first line."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    for marker in ("not accepted", "does not accept", "Unrecognized", "No action", "Not a valid", "Expected"):
        for line in lines:
            if marker in line:
                return line
    return lines[0] if lines else type(err).__name__


def build_trial_cli(config: dict[str, Any]) -> Any:
    """The ``cmkd`` LightningCLI of ``config``, instantiated; a config that does not build raises TrialConfigError."""
    from cmkd_lightning.cli import build_cli, ensure_wandb_mode

    ensure_wandb_mode()
    try:
        with warnings.catch_warnings():  # the config is the trial's, whatever the sweep's own command line holds
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
            return build_cli(config, run=False, parser_kwargs={"exit_on_error": False})
    except (argparse.ArgumentError, SystemExit, ValueError, TypeError, KeyError, ImportError) as err:
        raise TrialConfigError(_short_reason(err)) from err


def run_trial_config(
    config: dict[str, Any], callbacks: Sequence[Any] = (), fit: bool = True
) -> tuple[Any, dict[str, float]]:
    """Instantiate ``config`` with the ``cmkd`` LightningCLI, add ``callbacks``, fit; return (cli, metrics)."""
    cli = build_trial_cli(config)
    cli.trainer.callbacks.extend(callbacks)
    if fit:
        cli.trainer.fit(cli.model, cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return cli, metrics


def finish_wandb_run(sweep_config: Mapping[str, Any], summary: Mapping[str, Any], exit_code: int) -> dict[str, str]:
    """Finish this process's W&B run (if any) after adding the trial to its config and summary.

    ``wandb.run`` is the run a trial's ``WandbLogger`` started; finishing it (``Run.finish``) makes the next trial's
    logger start a run of its own instead of reusing this one. Returns the run's id, folder and URL (online only).
    """
    if "wandb" not in sys.modules:  # no trial imported wandb: no run to finish
        return {}
    import wandb

    run = wandb.run
    if run is None:
        return {}
    run.config.update({"sweep": dict(sweep_config)}, allow_val_change=True)
    run.summary.update({f"sweep/{k}": v for k, v in summary.items()})
    info = {"wandb_run_id": str(run.id), "wandb_run_dir": str(Path(run.dir).parent)}
    url = None
    with contextlib.suppress(Exception):  # offline runs have no URL
        url = run.url
    if url:
        info["wandb_url"] = str(url)
    run.finish(exit_code=exit_code)
    return info


def _frozen(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(number)  # pragma: no cover - Optuna created the trial before calling the objective


class _GridExhausted(Exception):
    """Another worker took the last queued grid point between this worker's look at the queue and its ask."""


def _queue_grid(study: Any, params: Mapping[str, Mapping[str, Any]]) -> None:
    """Put every grid point not queued before into the study's queue once (call under the storage lock)."""
    import itertools

    from optuna.trial import TrialState

    keys = list(params)
    queued = [dict(p) for p in study.user_attrs.get(_GRID_QUEUED, [])]
    # points a study run before queueing existed (Optuna's GridSampler) already ran or run: not again
    done = [t.params for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL and t.params]
    for point in itertools.product(*(params[k]["choices"] for k in keys)):
        values = dict(zip(keys, point))
        if values in queued or values in done:
            continue
        study.enqueue_trial(values, user_attrs={"grid_point": len(queued)})
        queued.append(values)
    study.set_user_attr(_GRID_QUEUED, queued)


def open_study(
    storage: str,
    study_name: str,
    space: Mapping[str, Any],
    *,
    seed: int = 0,
    pruner: Any | None = None,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = None,
) -> Any:
    """Create or load a study; any number of workers may call this at once, also on a fresh database.

    The schema, the study and (for ``sampler: grid``) the queue of grid points are created under a lock
    (:func:`_storage_lock`), so concurrent first workers neither race on Optuna's tables nor queue a point twice.

    Args:
        storage: an RDB URL (checked and completed by :func:`resolve_storage_url`).
        study_name: the study to create or load.
        space: a checked space mapping (its sampler, pruner, direction and, for a grid, its points).
        seed: seed of the sampler.
        pruner: an ``optuna.pruners`` object, overriding the space's ``pruner``.
        heartbeat_interval: seconds between a running trial's heartbeats (``None``: no heartbeat).
        grace_period: seconds without a heartbeat before a trial is FAILED and queued once more.

    Returns:
        The ``optuna.Study``.

    Example:
        >>> import tempfile
        >>> space = {"sampler": "grid", "params": {"x": {"type": "categorical", "choices": [1, 2]}}}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     study = open_study(f"sqlite:///{d}/s.db", "s", space, heartbeat_interval=None)
        ...     [(t.state.name, t.user_attrs["grid_point"]) for t in study.get_trials()]
        [('WAITING', 0), ('WAITING', 1)]
    """
    optuna = _require_optuna()
    params = _check_space(dict(space))
    url = resolve_storage_url(storage)
    if space.get("sampler", "tpe") == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:  # a grid study's trials come from its queue; the sampler only fills in what a queued trial lacks
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner = pruner or (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if space.get("pruner", "median") == "median"
        else optuna.pruners.NopPruner()
    )
    direction = space.get("direction", "maximize")
    with _storage_lock(url):
        rdb = _open_storage(url, heartbeat_interval, grace_period)
        study = optuna.create_study(
            study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
        )
        if space.get("sampler") == "grid":
            _queue_grid(study, params)
    return study


def run_sweep(
    config: str | Path | Mapping[str, Any],
    space: str | Path | Mapping[str, Any],
    trials: int,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    out: str | Path = "runs/sweep",
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    pruning_metric: str = "val/acc_top1",
    pruner: Any | None = None,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = None,
) -> Any:
    """Run (or continue) an Optuna study over a ``cmkd`` config; the Python API of ``cmkd-sweep``.

    Args:
        config: a ``cmkd fit`` YAML config (path or already-loaded mapping).
        space: the search space (path or mapping; see the module docstring for the format).
        trials: at most this many trials in this call (a shared study also receives other workers' trials; a grid
            study stops earlier when its queue of grid points is empty).
        study_name: default: ``<config stem>-<space stem>``.
        storage: an Optuna RDB URL; default ``sqlite:///<out>/<study_name>.db``.
        out: directory of the SQLite file and of the trials' run directories.
        overrides: dotted config keys set in every trial (after the space's ``fixed``), e.g.
            ``{"trainer.max_epochs": 4}``.
        seed: seed of the sampler (give each worker of a shared TPE or random study its own).
        pruning_metric: metric reported to the pruner after every validation epoch.
        pruner: an ``optuna.pruners`` object, overriding the space's ``pruner``.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None`` or 0: no heartbeat (a dead
            worker's trial then stays RUNNING).
        grace_period: seconds without a heartbeat after which a running trial is FAILED and retried once
            (default: twice ``heartbeat_interval``).

    Returns:
        The ``optuna.Study`` (``study.best_trial``, ``study.trials_dataframe()``, ...).

    Raises:
        SweepError: a space file, storage URL or trial configuration that cannot be used (the message names it);
            a trial whose configuration does not build is recorded FAILED with the reason first.
    """
    optuna = _require_optuna(integration=True)
    from optuna.storages import fail_stale_trials
    from optuna_integration import PyTorchLightningPruningCallback
    from sqlalchemy.engine import make_url

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InvalidArgumentError(f"Expected `trials` to be an integer >= 1, but got {trials!r}.")
    base = _load_yaml(config, "config")
    spec = _load_yaml(space, "space")
    params = _check_space(spec, "the space" if isinstance(space, Mapping) else f"space file {space}")
    metric = spec.get("metric", "val/acc_top1_best")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if study_name is None:
        stems = [Path(s).stem if not isinstance(s, Mapping) else "config" for s in (config, space)]
        study_name = "-".join(stems)
    url = resolve_storage_url(storage or f"sqlite:///{(out / f'{study_name}.db').resolve()}")
    grid = spec.get("sampler", "tpe") == "grid"
    study = open_study(
        url,
        study_name,
        spec,
        seed=seed,
        pruner=pruner,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    worker = f"{socket.gethostname()}:{os.getpid()}"
    shown_storage = make_url(url).render_as_string(hide_password=True)

    def objective(trial: Any) -> float:
        frozen = _frozen(study, trial.number)
        if grid and "grid_point" not in frozen.user_attrs:
            trial.set_user_attr("fail_reason", "no grid point left (another worker took the last one)")
            raise _GridExhausted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_of = _retry_callback().retried_trial_number(frozen)
        cfg = copy.deepcopy(base)
        for key, value in {**(spec.get("fixed") or {}), **(overrides or {})}.items():
            set_dotted(cfg, key, value)
        values = suggest(trial, params)
        for key, value in values.items():
            set_dotted(cfg, key, value)
        trial_dir = out / study_name / f"trial-{trial.number}"
        _name_trial_logger(cfg, study_name, trial.number, trial_dir)
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("worker", worker)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        sweep_info = {"study": study_name, "trial": trial.number, "params": values, "storage": shown_storage}
        if retry_of is not None:
            sweep_info["retry_of"] = retry_of
        state, exit_code, value = "FAIL", 1, math.nan
        metrics: dict[str, float] = {}
        try:
            cli = build_trial_cli(cfg)
            cli.trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=pruning_metric))
            cli.trainer.fit(cli.model, cli.datamodule)
            metrics = {
                k: float(v) for k, v in cli.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
            }
            if metric not in metrics:
                raise SweepError(f"Expected the run to log `metric` {metric!r}, but it logged {sorted(metrics)}.")
            value = metrics[metric]
            if not math.isfinite(value):
                raise SweepError(f"Expected trial {trial.number}'s {metric} to be finite, but it is {value}.")
            state, exit_code = "COMPLETE", 0
        except optuna.TrialPruned:
            state, exit_code = "PRUNED", 0
            raise
        except TrialConfigError as err:
            keys = ", ".join(f"{k}={v!r}" for k, v in values.items())
            reason = f"trial {trial.number} ({keys}): the config does not build: {err}"
            trial.set_user_attr("fail_reason", reason)
            raise TrialConfigError(reason) from None
        except BaseException as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {_short_reason(err)}")
            raise
        finally:
            summary = {"state": state, "metric": metric, "value": value}
            for key, item in finish_wandb_run(sweep_info, summary, exit_code).items():
                trial.set_user_attr(key, item)
        for key in ("val/acc_top1", "val/acc_top1_best", "val/acc_top5", "train/loss"):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        return value

    heartbeat = bool(heartbeat_interval)

    def fail_stale() -> None:  # a dead worker's trial: FAILED, and queued once more
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)

    from cmkd_lightning.experiments.training import isolated_run

    # Each trial's LightningCLI sets the torch thread count of its config; the caller gets its own back.
    with isolated_run(0), _without_config_tracebacks():
        _optimize(study, objective, trials, grid, fail_stale)
    fail_stale()
    _link_best_trial(study)
    return study


class _DropConfigTracebacks(logging.Filter):
    """Drop Optuna's traceback of a trial that did not build (cmkd-sweep says why once) or found no grid point left."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (TrialConfigError, _GridExhausted)))


@contextlib.contextmanager
def _without_config_tracebacks() -> Iterator[None]:
    handlers = logging.getLogger("optuna").handlers
    drop = _DropConfigTracebacks()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def _optimize(study: Any, objective: Any, trials: int, grid: bool, fail_stale: Any) -> None:
    from optuna.trial import TrialState

    for _ in range(trials):
        fail_stale()
        if grid and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
        try:
            study.optimize(objective, n_trials=1, catch=())
        except _GridExhausted:
            break


def _link_best_trial(study: Any) -> None:
    """Record the best trial (number, value, parameters, run folder, W&B run) in the study's user attributes."""
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return
    keep = ("run_dir", "wandb_run_id", "wandb_run_dir", "wandb_url")
    link = {"number": best.number, "value": best.value, "params": best.params}
    link.update({k: best.user_attrs[k] for k in keep if k in best.user_attrs})
    study.set_user_attr("best_trial", link)


def format_study(study: Any) -> str:
    """A plain-text table of the study's trials (number, state, parameters, value, note) and the best trial."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    short = {k: k.split(".")[-1] for k in keys}
    header = ["trial", "state", *short.values(), "value", "note"]
    rows = []
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        notes = []
        if "retry_of" in t.user_attrs:
            notes.append(f"retry of trial {t.user_attrs['retry_of']}")
        if t.state.name == "FAIL":
            notes.append(str(t.user_attrs.get("fail_reason", "worker stopped sending heartbeats")))
        rows.append([str(t.number), t.state.name, *(str(t.params.get(k, "-")) for k in keys), value, "; ".join(notes)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else list(map(len, header))
    lines = ["  ".join(h.rjust(w) for h, w in zip(header[:-1], widths)) + "  note"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r[:-1], widths)) + f"  {r[-1]}".rstrip() for r in rows]
    try:
        best = study.best_trial
    except ValueError:
        lines.append("best: no completed trial yet")
        return "\n".join(lines)
    line = f"best: trial {best.number}, value {best.value:.4f}, params {best.params}"
    if "run_dir" in best.user_attrs:
        line += f"; run {best.user_attrs['run_dir']}"
    if "wandb_run_id" in best.user_attrs:
        where = best.user_attrs.get("wandb_url") or best.user_attrs.get("wandb_run_dir")
        line += f"; W&B run {best.user_attrs['wandb_run_id']} ({where})"
    lines.append(line)
    return "\n".join(lines)


def _parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise InvalidArgumentError(f"Expected config overrides of the form --key=value, but got {item!r}.")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise InvalidArgumentError(f"Expected a value after {item!r}.")
            i += 1
            value = items[i]
        overrides[key] = yaml.safe_load(value)
        i += 1
    return overrides


def build_parser() -> argparse.ArgumentParser:
    """The ``cmkd-sweep`` argument parser; ``--help`` gives every option's default and the space file's format."""
    p = argparse.ArgumentParser(
        prog="cmkd-sweep",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any further --key=value (e.g. --trainer.max_epochs=4) overrides that config key in every trial.",
    )
    p.add_argument("-c", "--config", required=True, help="a `cmkd fit` YAML config (required)")
    p.add_argument("--space", required=True, help="search-space YAML, see examples/sweeps/ (required)")
    p.add_argument("--trials", type=int, required=True, help="at most this many trials in this call (required)")
    p.add_argument("--study-name", default=None, help="the study's name (default: <config stem>-<space stem>)")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL shared by several workers, e.g. postgresql://user:pass@host:5432/db; see "
        "docs/SWEEPS.md (default: sqlite:///<out>/<study name>.db)",
    )
    p.add_argument("--out", default="runs/sweep", help="directory of the study and its runs (default: %(default)s)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampler seed; give each worker of a shared study its own (default: %(default)s)",
    )
    p.add_argument(
        "--pruning-metric",
        default="val/acc_top1",
        help="metric reported to the pruner after every validation epoch (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=30,
        help="seconds between a running trial's heartbeats; 0: none (default: %(default)s)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="seconds without a heartbeat before a trial is FAILED and retried once "
        "(default: 2 x --heartbeat-interval)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``cmkd-sweep`` (returns None, so the process exits 0 after success).

    A space file, storage URL or trial configuration that cannot be used ends the command with exit status 2 and
    one ``cmkd-sweep: error: ...`` line naming the file, key or URL (a trial that does not build is FAILED first).
    """
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    try:
        overrides = _parse_overrides(extra)
    except ValueError as err:
        p.error(str(err))
    if args.trials < 1:
        p.error(f"Expected `--trials` to be >= 1, but got {args.trials}.")
    if args.heartbeat_interval < 0:
        p.error(f"Expected `--heartbeat-interval` to be >= 0, but got {args.heartbeat_interval}.")
    if args.grace_period is not None and args.grace_period < 1:
        p.error(f"Expected `--grace-period` to be >= 1, but got {args.grace_period}.")
    from cmkd_lightning.utilities.runtime import quiet_lightning

    try:
        with quiet_lightning():  # Lightning's known noise, for this run only
            study = _run_from_args(args, overrides)
    except (SweepError, FileNotFoundError) as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    print(format_study(study))


def _run_from_args(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    return run_sweep(
        args.config,
        args.space,
        args.trials,
        study_name=args.study_name,
        storage=args.storage,
        out=args.out,
        overrides=overrides,
        seed=args.seed,
        pruning_metric=args.pruning_metric,
        heartbeat_interval=args.heartbeat_interval or None,
        grace_period=args.grace_period,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
