"""cmkd-lightning: knowledge distillation for PyTorch Lightning built around CMKD.

The package exposes :class:`DistillationModule` (the LightningModule), the losses in :mod:`cmkd_lightning.losses`,
their math in :mod:`cmkd_lightning.functional`, the model zoo in :mod:`cmkd_lightning.models` and callbacks in
:mod:`cmkd_lightning.callbacks`.
"""

from cmkd_lightning.module import DistillationModule

__version__ = "0.1.0"

__all__ = ["DistillationModule", "__version__"]
