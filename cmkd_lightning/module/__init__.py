"""The LightningModules: :class:`DistillationModule` (teacher → student) and :class:`TeacherModule` (CE alone).

One concept per file: ``distillation.py`` (the steps), ``teacher.py``, ``defaults.py`` (defaults that depend on
other arguments), ``records.py`` (what a run records and how it is rebuilt), ``networks.py`` (building, checking
and loading the two networks), ``guard.py`` (the ``check_finite`` guard), ``epoch_metrics.py`` (epoch means and
accuracies) and ``checkpointing.py`` (what a checkpoint holds).
"""

from cmkd_lightning.module.distillation import DistillationModule
from cmkd_lightning.module.networks import Features
from cmkd_lightning.module.teacher import TeacherModule

__all__ = ["DistillationModule", "Features", "TeacherModule"]
