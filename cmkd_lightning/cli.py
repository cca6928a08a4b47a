"""The ``cmkd`` console command: LightningCLI over :class:`DistillationModule` and any LightningDataModule."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from cmkd_lightning.callbacks.run_summary import RunSummary
from cmkd_lightning.module import DistillationModule
from cmkd_lightning.runtime import CPU_THREADS_ENV, quiet_lightning, set_cpu_threads

# `cmkd fit --help` ends with this: where the library's building blocks are and how the optimiser is set.
EPILOG = (
    "Building blocks: `cmkd list models` (zoo names for --model.init_args.student / teacher), `cmkd list losses` "
    "(class_paths for --model.init_args.losses), `cmkd list data` (class_paths for --data). "
    "Optimiser: set it on the module (--model.init_args.optimizer=sgd|adamw, lr, momentum, weight_decay, "
    "lr_schedule); LightningCLI's --optimizer / --lr_scheduler are switched off so there is one way. "
    f"CPU runs use 1 torch thread unless --cpu_threads or ${CPU_THREADS_ENV} says otherwise (0: torch's default)."
)
_OPTIMIZER_ERROR = (
    "`{key}` is not a cmkd option: the optimiser and schedule are DistillationModule arguments, set them with "
    "--model.init_args.optimizer=sgd|adamw, --model.init_args.lr=..., --model.init_args.momentum=..., "
    "--model.init_args.weight_decay=..., --model.init_args.lr_schedule=cosine|multistep|none "
    "(or under `model: init_args:` in the config). Got {value!r}."
)


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def ensure_wandb_mode() -> str:
    """Run W&B offline when no API key is configured and no mode was chosen; say so. Returns the mode."""
    mode = os.environ.get("WANDB_MODE")
    if mode is None and not _wandb_has_credentials():
        os.environ["WANDB_MODE"] = mode = "offline"
        rank_zero_info(
            "W&B: no API key found (WANDB_API_KEY or ~/.netrc), so runs are logged offline under the logger's "
            "save_dir; upload them later with `wandb sync <run dir>`. Set WANDB_MODE=online to change this."
        )
    return mode or "online"


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
        ensure_wandb_mode()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, RunSummary) for c in trainer.callbacks):
            trainer.callbacks.append(RunSummary())
        return trainer


def list_components(kind: str) -> str:
    """The names `cmkd list models|losses|data` prints, one per line, with how to use them in a config."""
    if kind == "models":
        from cmkd_lightning.models import list_models

        names = list_models()
        return "Zoo names for --model.init_args.student / --model.init_args.teacher:\n" + "\n".join(
            f"  {n}" for n in names
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
    epilog = {"epilog": EPILOG}
    with quiet_lightning():
        DistillationCLI(
            DistillationModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigCallback,
            auto_configure_optimizers=False,
            parser_kwargs={"fit": epilog, "validate": epilog, "test": epilog, "predict": epilog},
            args=args,
        )


if __name__ == "__main__":  # pragma: no cover
    main()
