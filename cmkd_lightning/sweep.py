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
``<out>/<study>/trial-<n>``, with the trial number appended to the logger's run name. Studies live in SQLite at
``<out>/<study>.db`` unless ``--storage`` gives an RDB URL (e.g. ``postgresql://...``), which lets several machines
work on one study (``load_if_exists``). Unpromising trials are pruned after each validation epoch through
Optuna's Lightning integration (``optuna_integration.PyTorchLightningPruningCallback``, monitoring
``pruning_metric``, default ``val/acc_top1``).

Example::

    cmkd-sweep -c examples/configs/digits/cmkd.yaml --space examples/sweeps/cmkd_beta_fig8.yaml --trials 5 \\
        --trainer.max_epochs=4
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

_PARAM_TYPES = ("categorical", "int", "float")
_SAMPLERS = ("tpe", "random", "grid")
_PRUNERS = ("median", "none")


def _require_optuna() -> Any:
    try:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"cmkd-sweep needs Optuna and its Lightning integration ({err.name} is missing): "
            "pip install 'cmkd-lightning[sweep]'"
        ) from err
    return optuna


def _load_yaml(source: str | Path | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `{what}` to be a YAML file, but {str(path)!r} does not exist.")
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"Expected `{what}` ({path}) to hold a YAML mapping, but got {type(loaded).__name__}.")
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
                raise KeyError(f"Expected `{key}` to index an existing list item at {'.'.join(parts[: i + 1])!r}.")
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise KeyError(f"Expected `{key}` to index an existing list item, but the list has {len(node)} items.")
        node[int(last)] = value
    else:
        node[last] = value


def _check_space(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    params = space.get("params")
    if not isinstance(params, dict) or not params:
        raise ValueError("Expected the space to have a non-empty `params` mapping (config key -> distribution).")
    for key, spec in params.items():
        if not isinstance(spec, dict) or spec.get("type") not in _PARAM_TYPES:
            raise ValueError(
                f"Expected `params.{key}` to be a mapping with `type` in {_PARAM_TYPES}, but got {spec!r}."
            )
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ValueError(f"Expected `params.{key}` (categorical) to list `choices`, but got {spec!r}.")
        if spec["type"] in ("int", "float") and ("low" not in spec or "high" not in spec):
            raise ValueError(f"Expected `params.{key}` ({spec['type']}) to give `low` and `high`, but got {spec!r}.")
    if space.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ValueError(f"Expected `direction` to be 'maximize' or 'minimize', but got {space['direction']!r}.")
    if space.get("sampler", "tpe") not in _SAMPLERS:
        raise ValueError(f"Expected `sampler` to be one of {_SAMPLERS}, but got {space['sampler']!r}.")
    if space.get("pruner", "median") not in _PRUNERS:
        raise ValueError(f"Expected `pruner` to be one of {_PRUNERS}, but got {space['pruner']!r}.")
    if space.get("sampler") == "grid" and any(s["type"] != "categorical" for s in params.values()):
        raise ValueError("Expected only categorical `params` with `sampler: grid`.")
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


def _name_trial_logger(config: dict[str, Any], study_name: str, number: int, trial_dir: Path) -> None:
    """Append ``-trial<n>`` to the logger's run name and group W&B runs by study."""
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
            init.setdefault("group", study_name)
            init["save_dir"] = str(trial_dir)
        elif "save_dir" in init or entry["class_path"].endswith(("CSVLogger", "TensorBoardLogger")):
            init["save_dir"] = str(trial_dir)


def run_trial_config(
    config: dict[str, Any], callbacks: Sequence[Any] = (), fit: bool = True
) -> tuple[Any, dict[str, float]]:
    """Instantiate ``config`` with the ``cmkd`` LightningCLI, add ``callbacks``, fit; return (cli, metrics)."""
    from cmkd_lightning.cli import build_cli, ensure_wandb_mode

    ensure_wandb_mode()
    cli = build_cli(config, run=False)
    cli.trainer.callbacks.extend(callbacks)
    if fit:
        cli.trainer.fit(cli.model, cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return cli, metrics


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
) -> Any:
    """Run (or continue) an Optuna study over a ``cmkd`` config; the Python API of ``cmkd-sweep``.

    Args:
        config: a ``cmkd fit`` YAML config (path or already-loaded mapping).
        space: the search space (path or mapping; see the module docstring for the format).
        trials: trials to run in this call (a shared study may receive trials from other processes too).
        study_name: default: ``<config stem>-<space stem>``.
        storage: an Optuna RDB URL; default ``sqlite:///<out>/<study_name>.db``.
        out: directory of the SQLite file and of the trials' run directories.
        overrides: dotted config keys set in every trial (after the space's ``fixed``), e.g.
            ``{"trainer.max_epochs": 4}``.
        seed: seed of the sampler.
        pruning_metric: metric reported to the pruner after every validation epoch.
        pruner: an ``optuna.pruners`` object, overriding the space's ``pruner``.

    Returns:
        The ``optuna.Study`` (``study.best_trial``, ``study.trials_dataframe()``, ...).
    """
    optuna = _require_optuna()
    from optuna_integration import PyTorchLightningPruningCallback

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"Expected `trials` to be an integer >= 1, but got {trials!r}.")
    base = _load_yaml(config, "config")
    spec = _load_yaml(space, "space")
    params = _check_space(spec)
    metric = spec.get("metric", "val/acc_top1_best")
    direction = spec.get("direction", "maximize")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if study_name is None:
        stems = [Path(s).stem if not isinstance(s, Mapping) else "config" for s in (config, space)]
        study_name = "-".join(stems)
    storage = storage or f"sqlite:///{(out / f'{study_name}.db').resolve()}"
    sampler_name = spec.get("sampler", "tpe")
    if sampler_name == "grid":
        sampler = optuna.samplers.GridSampler({k: list(s["choices"]) for k, s in params.items()}, seed=seed)
    elif sampler_name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = pruner or (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if spec.get("pruner", "median") == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )

    def objective(trial: Any) -> float:
        cfg = copy.deepcopy(base)
        for key, value in {**(spec.get("fixed") or {}), **(overrides or {})}.items():
            set_dotted(cfg, key, value)
        for key, value in suggest(trial, params).items():
            set_dotted(cfg, key, value)
        trial_dir = out / study_name / f"trial-{trial.number}"
        _name_trial_logger(cfg, study_name, trial.number, trial_dir)
        trial.set_user_attr("run_dir", str(trial_dir))
        pruning = PyTorchLightningPruningCallback(trial, monitor=pruning_metric)
        _, metrics = run_trial_config(cfg, [pruning])
        if metric not in metrics:
            raise KeyError(f"Expected the run to log `metric` {metric!r}, but it logged {sorted(metrics)}.")
        for key in ("val/acc_top1", "val/acc_top1_best", "val/acc_top5", "train/loss"):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        value = metrics[metric]
        if not math.isfinite(value):
            raise ValueError(f"Trial {trial.number}: {metric} is {value}.")
        return value

    study.optimize(objective, n_trials=trials, catch=())
    return study


def format_study(study: Any) -> str:
    """A plain-text table of the study's trials (number, state, parameters, value) and the best trial."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    short = {k: k.split(".")[-1] for k in keys}
    header = ["trial", "state", *short.values(), "value"]
    rows = []
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        rows.append([str(t.number), t.state.name, *(str(t.params.get(k, "-")) for k in keys), value])
    widths = (
        [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else [len(h) for h in header]
    )
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    try:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, value {best.value:.4f}, params {best.params}")
    except ValueError:
        lines.append("best: no completed trial yet")
    return "\n".join(lines)


def _parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise ValueError(f"Expected config overrides of the form --key=value, but got {item!r}.")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise ValueError(f"Expected a value after {item!r}.")
            i += 1
            value = items[i]
        overrides[key] = yaml.safe_load(value)
        i += 1
    return overrides


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``cmkd-sweep`` (returns None, so the process exits 0 after success)."""
    p = argparse.ArgumentParser(
        prog="cmkd-sweep",
        description=__doc__.splitlines()[0],
        epilog="Any further --key=value (e.g. --trainer.max_epochs=4) overrides that config key in every trial.",
    )
    p.add_argument("-c", "--config", required=True, help="a `cmkd fit` YAML config")
    p.add_argument("--space", required=True, help="search-space YAML (see examples/sweeps/)")
    p.add_argument("--trials", type=int, required=True, help="trials to run in this call")
    p.add_argument("--study-name", default=None, help="default: <config stem>-<space stem>")
    p.add_argument("--storage", default=None, help="Optuna RDB URL to share a study (default: SQLite under --out)")
    p.add_argument("--out", default="runs/sweep", help="directory of the study and its runs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--pruning-metric", default="val/acc_top1")
    args, extra = p.parse_known_args(argv)
    try:
        overrides = _parse_overrides(extra)
    except ValueError as err:
        p.error(str(err))
    if args.trials < 1:
        p.error(f"Expected `--trials` to be >= 1, but got {args.trials}.")
    from cmkd_lightning.runtime import quiet_lightning

    with quiet_lightning():  # Lightning's known noise, for this run only
        study = _run_from_args(args, overrides)
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
    )


if __name__ == "__main__":  # pragma: no cover
    main()
