"""cmkd-lightning: knowledge distillation for PyTorch Lightning built around CMKD.

The package exposes :class:`DistillationModule` (the LightningModule), :class:`TeacherModule` (a network trained
with cross-entropy alone, e.g. a teacher), the losses in :mod:`cmkd_lightning.losses`,
their math in :mod:`cmkd_lightning.functional`, the model zoo in :mod:`cmkd_lightning.models` and callbacks in
:mod:`cmkd_lightning.callbacks`.
"""

from importlib.metadata import PackageNotFoundError, version

from cmkd_lightning.module import DistillationModule, TeacherModule

try:  # pyproject.toml holds the version; the installed metadata is its only copy at run time
    __version__ = version("cmkd-lightning")
except PackageNotFoundError:  # imported from a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"

__all__ = ["DistillationModule", "TeacherModule", "__version__"]
