"""The ``cmkd`` console command: LightningCLI over :class:`DistillationModule` and any LightningDataModule."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from cmkd_lightning._cli_errors import BuildError, describe_build_error, explain_argument_error, verbose_requested
from cmkd_lightning._optional import available, require
from cmkd_lightning._resume import ResumeError, adopt_run_of, find_last_checkpoint, reserve_version
from cmkd_lightning.callbacks.checkpoint_guard import CheckpointGuard, CheckpointWriteError, NonFiniteCheckpointError
from cmkd_lightning.callbacks.run_summary import RunSummary
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.runtime import CPU_THREADS_ENV, quiet_lightning, set_cpu_threads

# `cmkd fit --help` ends with this: where the library's building blocks are and how the optimiser is set.
EPILOG = (
    "Building blocks: `cmkd list models` (zoo names for --model.init_args.student / teacher), `cmkd list losses` "
    "(class_paths for --model.init_args.losses), `cmkd list data` (class_paths for --data). "
    "Optimiser and schedule: module arguments, any torch class (--model.init_args.optimizer=torch.optim.AdamW "
    "--model.init_args.optimizer.init_args.lr=1e-3, --model.init_args.lr_scheduler=cmkd_lightning.schedules."
    "WarmupCosine); LightningCLI's --optimizer / --lr_scheduler are switched off so there is one way. "
    f"CPU runs use 1 torch thread unless --cpu_threads or ${CPU_THREADS_ENV} says otherwise (0: torch's default)."
)
_OPTIMIZER_ERROR = (
    "`{key}` is not a cmkd option: the optimiser and schedule are DistillationModule arguments, set them with "
    "--model.init_args.optimizer=torch.optim.Adam --model.init_args.optimizer.init_args.lr=..., "
    "--model.init_args.lr_scheduler=cmkd_lightning.schedules.WarmupCosine (any torch.optim class and scheduler; "
    "in a config: `model: init_args: optimizer: {{class_path: ..., init_args: {{...}}}}`). Got {value!r}."
)


def _wandb_credentials_host() -> tuple[bool, str]:
    """Ask wandb whether it has credentials for its configured server, and which server that is.

    wandb looks in WANDB_API_KEY, its settings files and ~/.netrc for the host of ``WANDB_BASE_URL`` (or its
    default); nothing is sent over the network, no prompt is shown, nothing is written.
    """
    wandb = require("wandb", extra="wandb", purpose="W&B logging (WandbLogger)")

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        auth = wbauth.authenticate_session(host=host, source="cmkd", prompt=False, verify=False, update_session=False)
        return auth is not None, str(settings.base_url)
    except (ImportError, AttributeError, TypeError):  # another wandb version: its public login, without a prompt
        host = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
        try:
            return bool(wandb.login(prompt=False, verify=False)), host
        except Exception:
            return False, host
    except Exception:  # wandb refuses the configuration (e.g. a malformed key): no usable credentials
        return False, os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def _wandb_unreachable(host: str, timeout: float) -> str | None:
    """Why a TCP connection to the W&B server ``host`` (a URL) failed within ``timeout`` seconds, or None."""
    url = urlsplit(host if "://" in host else f"https://{host}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


WANDB_PROBE_TIMEOUT_ENV = "CMKD_WANDB_TIMEOUT"


def _set_offline() -> str:
    """WANDB_MODE=offline, also in wandb's process settings (read from the environment when the lookup ran)."""
    os.environ["WANDB_MODE"] = "offline"
    try:
        from wandb.sdk import wandb_setup

        wandb_setup.singleton().settings.mode = "offline"
    except Exception:  # another wandb version: the environment variable is what it reads
        pass
    return "offline"


def ensure_wandb_mode() -> str:
    """Choose the W&B mode when none was set (``WANDB_MODE``), say why, and return it.

    Offline when wandb reports no credentials, or when the W&B server does not accept a TCP connection within
    ``$CMKD_WANDB_TIMEOUT`` seconds (default 5): without this, ``wandb.init`` waits about 100 s and then fails the run.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode is not None or not available("wandb"):  # no wandb: no W&B run to configure
        return mode or "disabled"
    has_credentials, host = _wandb_credentials_host()
    if not has_credentials:
        mode = _set_offline()
        rank_zero_info(
            f"W&B: no API key found (wandb has no credentials for {host}: WANDB_API_KEY, its settings or ~/.netrc), "
            "so runs are logged offline under the logger's save_dir; upload them later with `wandb sync <run dir>`. "
            "Set WANDB_MODE=online to change this."
        )
        return mode
    timeout = float(os.environ.get(WANDB_PROBE_TIMEOUT_ENV, "5"))
    reason = _wandb_unreachable(host, timeout)
    if reason is not None:
        mode = _set_offline()
        rank_zero_warn(
            f"W&B: an API key is configured but the server {host} cannot be reached within {timeout:g} s ({reason}), "
            "so this run is logged offline under the logger's save_dir; upload it later with `wandb sync <run dir>`."
        )
        return mode
    return "online"


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
    """LightningCLI that links the datamodule's ``num_classes`` into the model at instantiation."""

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
    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        for key in ("optimizer", "lr_scheduler"):
            value = config.get(key) if not self.auto_configure_optimizers else None
            if value is not None:
                raise SystemExit(f"cmkd: error: {_OPTIMIZER_ERROR.format(key='--' + key, value=value)}")
        trainer = config.trainer
        accelerator = str(trainer.get("accelerator") or "auto")
        gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
        if accelerator == "cpu" or (accelerator == "auto" and not gpu):
            set_cpu_threads(config.get("cpu_threads"))
        if trainer.get("enable_progress_bar") is None and not sys.stdout.isatty():
            trainer.enable_progress_bar = False  # no bar fragments in log files; RunSummary prints epoch lines
        if "WandbLogger" in str(trainer.get("logger")):  # name the extra before Lightning's own ImportError
            require("wandb", extra="wandb", purpose="trainer.logger WandbLogger")
        ensure_wandb_mode()

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            config = self._subcommand_config()
            files = [str(f) for f in (config.get("config") or []) if f is not None]
            raise describe_build_error(err, config.as_dict(), files) from err

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        # Every run is resumable and its checkpoints verified: a ModelCheckpoint with `save_last` when the config
        # has none (Lightning's own default has no last.ckpt), and the CheckpointGuard.
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        present = [*given, *callbacks]
        extra = list(callbacks)
        checkpointing = config.get("enable_checkpointing") is not False and not config.get("fast_dev_run")
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in present):
            extra.append(ModelCheckpoint(save_last=True))
        if not any(isinstance(c, CheckpointGuard) for c in present):
            extra.append(CheckpointGuard())
        return super()._instantiate_trainer(config, extra)

    @override
    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt_path = kwargs.get("ckpt_path")
        if subcommand == "fit" and ckpt_path == "last":
            found, searched, passed_over = find_last_checkpoint(self.trainer, getattr(self.model, "hparams", None))
            if found is None and passed_over:
                newest, differences = passed_over[0]
                raise ResumeError(
                    "Expected a checkpoint of this configuration to resume from (`--ckpt_path last`), but the "
                    f"last*.ckpt in {', '.join(str(s) for s in searched)} were written by other configurations "
                    f"(the newest, {newest}, differs in {', '.join(differences)}). Start the run without "
                    "--ckpt_path, or pass the path of a checkpoint file to resume it anyway."
                )
            if found is None:
                raise ResumeError(
                    "Expected a checkpoint to resume from (`--ckpt_path last`), but found no last*.ckpt in "
                    f"{', '.join(str(s) for s in searched) or 'any checkpoint folder (checkpointing is off)'}. "
                    "Start the run without --ckpt_path, or pass the path of a checkpoint file."
                )
            kwargs["ckpt_path"] = ckpt_path = str(found)
            rank_zero_info(f"Resuming from {found}")
        if subcommand == "fit" and ckpt_path not in (None, "last", "best", "hpc", "registry"):
            adopted = adopt_run_of(self.trainer, Path(ckpt_path))
            if adopted is not None:
                rank_zero_info(f"Continuing logger run {adopted} of {ckpt_path}")
        for logger in self.trainer.loggers:
            reserve_version(logger)
        return kwargs

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, RunSummary) for c in trainer.callbacks):
            trainer.callbacks.append(RunSummary())
        return trainer


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
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def main(args: list[str] | None = None) -> None:
    """Entry point of ``cmkd {fit,validate,test,predict,list}``; returns None so the process exits with 0."""
    argv = sys.argv[1:] if args is None else list(args)
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
    sub = {"epilog": EPILOG, **strict}
    try:
        with quiet_lightning():
            build_cli(
                None if args is None else argv,
                parser_kwargs={**strict, "fit": sub, "validate": sub, "test": sub, "predict": sub},
            )
    except ArgumentError as err:
        if verbose:
            raise
        sys.stderr.write(explain_argument_error(str(err)) + "\n")
        raise SystemExit(2) from None
    except BuildError as err:
        if verbose:
            raise
        sys.stderr.write(f"{err}\n")
        raise SystemExit(1) from None
    except (ResumeError, CheckpointWriteError, NonFiniteCheckpointError) as err:
        if verbose:
            raise
        sys.stderr.write(f"cmkd: error; full traceback: add --verbose or set CMKD_VERBOSE=1.\n{err}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
