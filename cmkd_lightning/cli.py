"""The ``cmkd`` console command: LightningCLI over :class:`DistillationModule` and any LightningDataModule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from cmkd_lightning.module import DistillationModule


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
        rank_zero_info(f"Resolved config saved to {target}")


class DistillationCLI(LightningCLI):
    """LightningCLI that links the datamodule's ``num_classes`` into the model at instantiation."""

    @override
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``cmkd {fit,validate,test,predict}``; returns None so the process exits with 0."""
    ensure_wandb_mode()
    DistillationCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
