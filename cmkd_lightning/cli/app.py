"""The ``cmkd`` console command: LightningCLI over :class:`DistillationModule` and any LightningDataModule."""

from __future__ import annotations

import argparse
import glob
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from cmkd_lightning.callbacks.checkpoint_guard import CheckpointGuard
from cmkd_lightning.callbacks.checkpoint_link import PublishCheckpoint
from cmkd_lightning.callbacks.preemption import Preemption
from cmkd_lightning.callbacks.progress_bar import EpochProgressBar
from cmkd_lightning.callbacks.run_summary import RunSummary
from cmkd_lightning.cli.errors import VERBOSE_ENV, describe_build_error, explain_argument_error, verbose_requested
from cmkd_lightning.cli.preflight import (
    check_accelerator,
    check_config_files,
    check_teacher_checkpoint,
    config_files_in,
)
from cmkd_lightning.cli.resume import (
    check_same_run,
    find_last_checkpoint,
    logger_folder,
    next_free_version,
    read_checkpoint,
    run_version_of,
    versioned_arguments,
)
from cmkd_lightning.cli.summary import ModelOverview
from cmkd_lightning.cli.text import NO_MODEL_HINT, SUBCOMMANDS, TOP_HELP, plain_text
from cmkd_lightning.cli.wandb_mode import ensure_wandb_mode
from cmkd_lightning.errors import CMKDError, DataError
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.utilities.optional import require
from cmkd_lightning.utilities.runtime import CPU_THREADS_ENV, quiet_lightning, set_cpu_threads

# `cmkd fit --help` ends with this: where the library's building blocks are and how the optimiser is set.
EPILOG = (
    "Building blocks: `cmkd list models` (zoo names for --model.init_args.student / teacher), `cmkd list losses` "
    "(class_paths for --model.init_args.losses), `cmkd list data` (class_paths for --data). "
    "Optimiser and schedule: module arguments, any torch class (--model.init_args.optimizer=torch.optim.AdamW "
    "--model.init_args.optimizer.init_args.lr=1e-3, --model.init_args.lr_scheduler=cmkd_lightning.schedules."
    "WarmupCosine); LightningCLI's --optimizer / --lr_scheduler are switched off so there is one way. "
    f"CPU runs use 1 torch thread unless --cpu_threads or ${CPU_THREADS_ENV} says otherwise (0: torch's default)."
)
# ModelCheckpoint's warning when a checkpoint is restored into another run's folder (every `cmkd test --ckpt_path`)
_EVAL_DIRPATH = r"The dirpath has changed from .* won't be reloaded.*"
# --ckpt_path values that are not files: Lightning's own choices, resolved by the Trainer
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")
_OPTIMIZER_ERROR = (
    "`{key}` is not a cmkd option: the optimiser and schedule are DistillationModule arguments, set them with "
    "--model.init_args.optimizer=torch.optim.Adam --model.init_args.optimizer.init_args.lr=..., "
    "--model.init_args.lr_scheduler=cmkd_lightning.schedules.WarmupCosine (any torch.optim class and scheduler; "
    "in a config: `model: init_args: optimizer: {{class_path: ..., init_args: {{...}}}}`). Got {value!r}."
)


class RunConfigCallback(SaveConfigCallback):
    """Store the resolved config with the run it belongs to, never overwriting another run's.

    With a :class:`~lightning.pytorch.loggers.WandbLogger` the YAML goes to the W&B run's own files directory
    (uploaded with the run) and the config is added to the run's config. Otherwise it goes to ``trainer.log_dir``
    (versioned per run by the CSV and TensorBoard loggers) as ``config.yaml``, or ``config-<k>.yaml`` if a file of
    that name already exists there.
    """

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        logger = trainer.logger
        # `trainer.log_dir` broadcasts from rank 0: every rank must evaluate it, or DDP ranks fall out of step.
        log_dir = None if isinstance(logger, WandbLogger) else trainer.log_dir
        if not trainer.is_global_zero:
            return
        if isinstance(logger, WandbLogger):
            run_dir = Path(logger.experiment.dir)
            logger.experiment.config.update({"cli": self.config.as_dict()}, allow_val_change=True)
        else:
            run_dir = Path(log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        target = run_dir / "config.yaml"
        k = 1
        while target.exists():
            target = run_dir / f"config-{k}.yaml"
            k += 1
        self.parser.save(self.config, target, skip_none=False, overwrite=False, multifile=self.multifile)
        self.already_saved = True
        self.saved_path = target  # read by RunSummary
        rank_zero_info(f"Resolved config saved to {target}")


class DistillationCLI(LightningCLI):
    """LightningCLI for distillation runs that are what they say.

    - links the datamodule's ``num_classes`` into the model at instantiation;
    - checks before building anything: the accelerator exists, a student's teacher checkpoint exists, W&B can
      log as asked (:mod:`~cmkd_lightning.cli.preflight`, :mod:`~cmkd_lightning.cli.wandb_mode`);
    - makes every ``fit`` resumable and pre-emptible: a ``ModelCheckpoint(save_last=True)`` when the config has
      none, :class:`~cmkd_lightning.callbacks.CheckpointGuard`, :class:`~cmkd_lightning.callbacks.Preemption`,
      :class:`~cmkd_lightning.callbacks.RunSummary` and, with a progress bar, ``EpochProgressBar``;
    - prints :class:`~cmkd_lightning.cli.summary.ModelOverview` (student, teacher, trainable and frozen counts)
      instead of Lightning's model table, unless ``trainer.enable_model_summary`` is set;
    - ``--ckpt_path`` (a file, or ``last``) resumes only a checkpoint of the same model and method, continuing its
      logger run (same W&B id, same CSV/TensorBoard version); a new run without a fixed version gets a version
      folder of its own.

    Everything goes through LightningCLI's public hooks (``parse_arguments``, ``before_instantiate_classes``,
    ``instantiate_trainer``, ``after_fit``) and the loggers' constructor arguments.
    """

    _ckpt_path: str | None = None  # an explicit --ckpt_path file, set aside by `parse_arguments`
    _overview = False  # print ModelOverview (set in `before_instantiate_classes`)

    @override
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--cpu_threads",
            type=int | None,
            default=None,
            help=f"torch threads when training on the CPU (default: ${CPU_THREADS_ENV}, else 1; 0: torch's default)",
        )
        if not self.auto_configure_optimizers:
            # Accepted only to answer with a clear message (see `before_instantiate_classes`); hidden from --help.
            for key in ("optimizer", "lr_scheduler"):
                parser.add_argument(f"--{key}", type=Any, default=None, help=argparse.SUPPRESS)

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    @override
    def parse_arguments(self, parser: Any, args: Any) -> None:
        # LightningCLI would merge an explicit --ckpt_path's hyperparameters over the config (and so train the
        # checkpoint's method under another config's name); keep the config as given, check the file here, and
        # compare the two in `instantiate_trainer`.
        super().parse_arguments(parser, args)
        self._ckpt_path = None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path is None or ckpt_path in _SPECIAL_CKPT or "://" in str(ckpt_path):
            return
        read_checkpoint(ckpt_path)  # missing, empty, truncated, unsafe: say so now, in a few lines
        self._ckpt_path = str(ckpt_path)
        config.ckpt_path = None

    def _config_files(self) -> list[Path]:
        return [Path(str(f)) for f in (self._subcommand_config().get("config") or []) if f is not None]

    @override
    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        for key in ("optimizer", "lr_scheduler"):
            value = config.get(key) if not self.auto_configure_optimizers else None
            if value is not None:
                raise SystemExit(f"cmkd: error: {_OPTIMIZER_ERROR.format(key='--' + key, value=value)}")
        trainer = config.trainer
        accelerator = str(trainer.get("accelerator") or "auto")
        check_accelerator(accelerator)
        gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
        if accelerator == "cpu" or (accelerator == "auto" and not gpu):
            set_cpu_threads(config.get("cpu_threads"))
        # Lightning's table lists metric containers and "Total FLOPs: 0"; cmkd prints ModelOverview instead,
        # unless the config asks for Lightning's (enable_model_summary: true) or for none (false).
        self._overview = trainer.get("enable_model_summary") is None
        if self._overview:
            trainer.enable_model_summary = False
        if trainer.get("enable_progress_bar") is None and not sys.stdout.isatty():
            trainer.enable_progress_bar = False  # no bar fragments in log files; RunSummary prints epoch lines
        uses_wandb = "WandbLogger" in str(trainer.get("logger"))
        if uses_wandb:  # name the extra before Lightning's own ImportError
            require("wandb", extra="wandb", purpose="trainer.logger WandbLogger")
            _make_wandb_dirs(trainer.get("logger"))
        model_args = (config.get("model") or Namespace()).get("init_args") or Namespace()
        check_teacher_checkpoint(model_args.get("teacher_checkpoint"), self._config_files())
        ensure_wandb_mode(uses_wandb and not trainer.get("fast_dev_run"))

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except CMKDError:
            raise
        except Exception as err:
            config = self._subcommand_config()
            files = [str(f) for f in self._config_files()]
            raise describe_build_error(err, config.as_dict(), files) from err

    # -- the trainer: callbacks, the checkpoint to resume, the logger run -----------------------------------

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer") or {}
        given = trainer_config.get("callbacks") or []
        callbacks = list(given) if isinstance(given, list) else [given]
        fast_dev_run = bool(trainer_config.get("fast_dev_run"))
        if fast_dev_run:  # a smoke test: Lightning would still write last.ckpt, and PublishCheckpoint would link it
            callbacks = [c for c in callbacks if not isinstance(c, (ModelCheckpoint, PublishCheckpoint))]
        elif trainer_config.get("enable_checkpointing") is not False:
            if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
                callbacks.append(ModelCheckpoint(save_last=True))
        for kind in (CheckpointGuard, Preemption, RunSummary):
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(kind())
        if self._overview and not any(isinstance(c, ModelOverview) for c in callbacks):
            callbacks.append(ModelOverview())
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(EpochProgressBar())  # "Epoch 3/5" in the third of five, as every record counts
        kwargs.setdefault("callbacks", callbacks)
        if self._ckpt_path is not None:  # set aside in `parse_arguments`: the run must be the checkpoint's
            config["ckpt_path"] = self._ckpt_path  # what the subcommand receives (LightningCLI reads config_init)
            check_same_run(self._ckpt_path, self.model, read_checkpoint(self._ckpt_path))
        if self.subcommand == "fit" and not fast_dev_run:
            logger = self._run_logger(config, trainer_config, callbacks)
            if logger is not None:
                kwargs.setdefault("logger", logger)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Refuse a ``fit`` that trained nothing because the training data is empty (Lightning only warns)."""
        trainer = self.trainer
        if trainer.num_training_batches == 0 and trainer.limit_train_batches not in (0, 0.0):
            data = type(self.datamodule).__name__ if self.datamodule is not None else "the data"
            raise DataError(
                f"Expected training batches from {data}, but its train_dataloader() yields none (an empty dataset, or "
                "fewer samples than one batch with drop_last=True): nothing was trained. Check the data path and "
                "split sizes."
            )

    def _logger_config(self) -> Any:
        """The trainer's logger as configured (``class_path`` + ``init_args``), or None for several / none."""
        logger = self._subcommand_config().trainer.get("logger")
        return logger if isinstance(logger, Namespace) and logger.get("class_path") else None

    def _run_logger(self, config: dict[str, Any], trainer_config: dict[str, Any], callbacks: list[Any]) -> Any:
        """Resolve ``--ckpt_path`` (check the run's identity) and return the logger that continues or starts its run.

        Returns None to keep the configured logger as it is.
        """
        logger = trainer_config.get("logger")
        logger = logger if isinstance(logger, Logger) else None
        spec = self._logger_config()
        init_args = spec.init_args.as_dict() if spec is not None and spec.get("init_args") else {}
        fixed = init_args.get("id") or init_args.get("version") if logger is not None else None
        root = Path(trainer_config.get("default_root_dir") or Path.cwd())
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            found = self._find_last(logger, fixed, init_args.get("name"), root, callbacks)
            config["ckpt_path"] = ckpt_path = str(found)  # what `fit` receives (LightningCLI reads config_init)
            rank_zero_info(f"Resuming from {found}")
        if logger is None or spec is None or not isinstance(logger, (WandbLogger, CSVLogger, TensorBoardLogger)):
            return None
        version = None
        if ckpt_path not in (None, *_SPECIAL_CKPT) and fixed is None:
            version = run_version_of(Path(str(ckpt_path)), logger, root)
            if version is not None:
                rank_zero_info(f"Continuing logger run {version} of {ckpt_path}")
        if version is None and fixed is None and isinstance(logger, (CSVLogger, TensorBoardLogger)):
            if rank_zero_only.rank != 0:  # the other ranks read the folder from rank 0
                return None
            version = f"version_{next_free_version(logger_folder(logger, root))}"
        if version is None:
            return None
        return type(logger)(**{**init_args, **versioned_arguments(logger, version)})

    def _find_last(self, logger: Logger | None, fixed: Any, run_name: Any, root: Path, callbacks: list[Any]) -> Path:
        """The newest ``last*.ckpt`` of this run's model and method in its checkpoint folders."""
        folders = []
        for callback in callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if callback.dirpath is not None:
                folders.append(Path(glob.escape(str(callback.dirpath))))
            elif logger is None:
                folders.append(Path(glob.escape(str(root))) / "checkpoints")
            else:
                base = Path(glob.escape(str(logger_folder(logger, root))))
                version = "*" if fixed is None else glob.escape(_version_folder(logger, fixed))
                folders.append(base / version / "checkpoints")
        name = str(run_name) if isinstance(logger, WandbLogger) and run_name and fixed is None else None
        search = find_last_checkpoint(folders, self.model, run_name=name)
        if search.found is None:
            raise search.error()
        return search.found


def _make_wandb_dirs(loggers: Any) -> None:
    """Create each WandbLogger's ``save_dir`` / ``dir`` now: wandb warns "git root <dir> does not exist" otherwise."""
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, Namespace) or "WandbLogger" not in str(logger.get("class_path")):
            continue
        init_args = logger.get("init_args") or Namespace()
        folder = init_args.get("save_dir") or init_args.get("dir")
        if folder:
            Path(str(folder)).mkdir(parents=True, exist_ok=True)


def _version_folder(logger: Logger, version: Any) -> str:
    """The run folder name of a logger version set in the config (W&B id as is, CSV/TensorBoard ``version_<k>``)."""
    if isinstance(logger, WandbLogger) or not isinstance(version, int):
        return str(version)
    return f"version_{version}"


def build_cli(
    args: list[str] | dict[str, Any] | None,
    *,
    run: bool = True,
    save_config_callback: Any = RunConfigCallback,
    **kwargs: Any,
) -> DistillationCLI:
    """The ``cmkd`` command's :class:`DistillationCLI`, as ``cmkd``, ``cmkd-sweep`` and the GPU check build it.

    Any module (``DistillationModule`` and subclasses) and data module by ``class_path``; the optimiser and the
    schedule are module arguments only (no ``--optimizer``). ``run=False`` only instantiates; ``kwargs`` go to
    ``LightningCLI`` (e.g. ``parser_kwargs``).
    """
    return DistillationCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=save_config_callback,
        auto_configure_optimizers=False,
        run=run,
        args=args,
        **kwargs,
    )


def list_components(kind: str) -> str:
    """The names `cmkd list models|losses|data` prints, one per line, with how to use them in a config."""
    if kind == "models":
        from cmkd_lightning.models import list_models, model_aliases

        aliases = model_aliases()
        return (
            "Zoo names for --model.init_args.student / --model.init_args.teacher (each alias works too):\n"
            + "\n".join(
                f"  {n}" + (f"  (also: {', '.join(aliases[n])})" if n in aliases else "") for n in list_models()
            )
        )
    if kind == "losses":
        import cmkd_lightning.losses as losses

        names = [n for n in losses.__all__ if n != "DistillationLoss"]
        return "Losses for --model.init_args.losses (a list of {class_path, init_args}):\n" + "\n".join(
            f"  cmkd_lightning.losses.{n}: {_first_line(getattr(losses, n))}" for n in names
        )
    if kind == "data":
        import datamodules

        names = [n for n in datamodules.__all__ if n.endswith("DataModule")]
        return "Data modules for --data (class_path):\n" + "\n".join(
            f"  datamodules.{n}: {_first_line(getattr(datamodules, n))}" for n in names
        )
    raise SystemExit(f"cmkd: error: Expected `cmkd list models|losses|data`, but got `cmkd list {kind}`.")


def _first_line(obj: Any) -> str:
    """The first line of ``obj``'s docstring as plain text (no reST roles or backquotes)."""
    return plain_text((obj.__doc__ or "").strip().splitlines()[0]) if obj.__doc__ else ""


def _misses_model_or_data(message: str) -> bool:
    """Whether a parse error says the model or the data is missing (a run started without ``-c``)."""
    found = re.search(r"arguments are required: (.*)", message)
    return found is not None and bool(re.search(r"\b(model|data)\b", found.group(1)))


def _finish_wandb(exit_code: int = 1) -> None:
    """End the W&B run the command left open (Lightning's WandbLogger never finishes it).

    After a failure, so wandb's own shutdown output comes before our message; after a success, so the run is
    marked finished and wandb prints its closing lines through Python (plain text when not on a terminal) rather
    than from its service process at exit (colour codes even in a log file).
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception:  # noqa: BLE001 - a W&B problem (e.g. a full disk) must not hide the run's own error
        pass


def _report(err: BaseException) -> None:
    """Print a library error as the last lines a person reads: where the traceback is, then the message."""
    _finish_wandb()
    message = str(err).strip() or type(err).__name__
    if not message.startswith("cmkd: error"):
        message = f"cmkd: error; full traceback: add --verbose or set {VERBOSE_ENV}=1.\n{message}"
    sys.stderr.write(message + "\n")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``cmkd {fit,validate,test,predict,list}``; returns None so the process exits with 0.

    Library errors (:class:`~cmkd_lightning.errors.CMKDError`) end the process with exit code 1 (2 for bad
    arguments) and at most three lines on stderr; ``--verbose`` or ``CMKD_VERBOSE=1`` shows the traceback. A run
    pre-empted by SIGTERM / SIGUSR1 exits with ``128 + signal`` after saving a checkpoint.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv:
        sys.stderr.write(TOP_HELP)
        raise SystemExit(2)
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(TOP_HELP)
        return
    if argv[:1] == ["list"]:
        kinds = argv[1:] or ["models", "losses", "data"]
        print("\n\n".join(list_components(kind) for kind in kinds))
        return
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key.startswith(("--optimizer", "--lr_scheduler")):
            raise SystemExit(f"cmkd: error: {_OPTIMIZER_ERROR.format(key=key, value=arg)}")
    verbose = verbose_requested(argv)
    argv = [a for a in argv if a != "--verbose"]
    if args is None:
        sys.argv = [sys.argv[0], *argv]  # LightningCLI reads them there (and warns if given both ways)
    # No unambiguous-prefix options (`--trainer.max_epoch` must not mean max_epochs); parse errors are raised
    # (not printed with the whole usage) so they can be shown in a few lines.
    strict = {"allow_abbrev": False, "exit_on_error": verbose}
    subcommands = {
        name: {"description": f"cmkd {name}: {SUBCOMMANDS[name]}.", "epilog": EPILOG, **strict}
        for name in ("fit", "validate", "test", "predict")
    }
    try:
        check_config_files(config_files_in(argv))
        with quiet_lightning():
            if argv[:1] in (["validate"], ["test"], ["predict"]):
                # An evaluation writes no checkpoint, so which ModelCheckpoint state a --ckpt_path restores is moot.
                warnings.filterwarnings("ignore", message=_EVAL_DIRPATH)
            build_cli(
                None if args is None else argv,
                parser_kwargs={**strict, "description": TOP_HELP.split("\n\n")[1], **subcommands},
            )
            _finish_wandb(exit_code=0)
    except ArgumentError as err:
        if verbose:
            raise
        message = explain_argument_error(str(err))
        if _misses_model_or_data(str(err)):
            message += "\n" + NO_MODEL_HINT
        sys.stderr.write(message + "\n")
        raise SystemExit(2) from None
    except SIGTERMException as err:  # Preemption saved a checkpoint and set the exit code (128 + signal)
        raise SystemExit(err.code if err.code else 128 + 15) from None
    except CMKDError as err:
        if verbose:
            raise
        _report(err)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
