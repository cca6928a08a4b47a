"""An exact teacher-logit cache for CIFAR: the frozen teacher's logits for all 162 training views of every image.

CIFAR's training augmentation (RandomCrop(32, padding=4) + horizontal flip) has 9 x 9 x 2 = 162 views per image.
``cmkd-teacher-cache build`` runs the teacher once on every view and writes one memory-mapped file whose header binds
it to the teacher's weights, the data, the transform, the split and the class count. Given that file,
:class:`datamodules.CIFAR100DataModule` yields each training image's sample and view index and
:class:`cmkd_lightning.DistillationModule` reads the teacher's logits instead of running the teacher in training.
Design and measurements: ``docs/TEACHER_CACHE.md``.
"""

from cmkd_lightning.teacher_cache.build import TeacherCacheBusyError, build_cache, main
from cmkd_lightning.teacher_cache.store import (
    CorruptTeacherCacheError,
    StaleTeacherCacheError,
    TeacherCacheNotFoundError,
    TeacherLogitCache,
    data_sha256,
    logits_sha256,
    read_header,
    state_dict_sha256,
)
from cmkd_lightning.teacher_cache.views import (
    IDENTITY_VIEW,
    NUM_VIEWS,
    render_all_views,
    render_views,
    transform_spec,
    view_params,
)

__all__ = [
    "IDENTITY_VIEW",
    "NUM_VIEWS",
    "CorruptTeacherCacheError",
    "StaleTeacherCacheError",
    "TeacherCacheBusyError",
    "TeacherCacheNotFoundError",
    "TeacherLogitCache",
    "build_cache",
    "data_sha256",
    "logits_sha256",
    "main",
    "read_header",
    "render_all_views",
    "render_views",
    "state_dict_sha256",
    "transform_spec",
    "view_params",
]
