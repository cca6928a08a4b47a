"""The ``cmkd`` command: LightningCLI over :class:`~cmkd_lightning.DistillationModule` and any LightningDataModule.

- :mod:`~cmkd_lightning.cli.app`: :class:`DistillationCLI`, :func:`build_cli` and the ``cmkd`` entry point.
- :mod:`~cmkd_lightning.cli.resume`: which checkpoint ``--ckpt_path`` resumes, and that it is the same run.
- :mod:`~cmkd_lightning.cli.preflight`: checks made before anything is built (config files, accelerator, teacher).
- :mod:`~cmkd_lightning.cli.wandb_mode`: online W&B only when it can work.
- :mod:`~cmkd_lightning.cli.errors`: build and argument errors in a few readable lines.
"""

from cmkd_lightning.cli.app import EPILOG, DistillationCLI, RunConfigCallback, build_cli, list_components, main
from cmkd_lightning.cli.wandb_mode import ensure_wandb_mode

__all__ = [
    "EPILOG",
    "DistillationCLI",
    "RunConfigCallback",
    "build_cli",
    "ensure_wandb_mode",
    "list_components",
    "main",
]
