"""Plain, typed functions on ``(N, C)`` logits: the math of every loss, shared by the modules and metrics."""

from cmkd_lightning.functional.at import at_loss, attention_map
from cmkd_lightning.functional.cmkd import (
    CMKDTerms,
    TeacherStats,
    cmkd_loss,
    cmkd_terms,
    default_regularization_strength,
    teacher_stats,
)
from cmkd_lightning.functional.cmkd_fused import cmkd_fused_terms, fast_teacher_stats
from cmkd_lightning.functional.correlation import pearson_corr, spearman_corr
from cmkd_lightning.functional.crd import crd_nce_loss
from cmkd_lightning.functional.dist import dist_loss, dist_terms
from cmkd_lightning.functional.dkd import dkd_loss, dkd_terms
from cmkd_lightning.functional.fitnet import fitnet_loss
from cmkd_lightning.functional.kd import kd_loss
from cmkd_lightning.functional.lskd import ls_kd_loss as ls_kd_loss  # deprecated alias of lskd_loss
from cmkd_lightning.functional.lskd import lskd_loss
from cmkd_lightning.functional.nkd import nkd_loss, nkd_terms
from cmkd_lightning.functional.ofd import ofd_loss, ofd_margin, ofd_partial_l2
from cmkd_lightning.functional.perplexity import perplexity_scale
from cmkd_lightning.functional.rank import rank
from cmkd_lightning.functional.reviewkd import hcl_loss
from cmkd_lightning.functional.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss, rkd_loss
from cmkd_lightning.functional.soft_rank import soft_rank
from cmkd_lightning.functional.zscore import zscore

__all__ = [
    "CMKDTerms",
    "TeacherStats",
    "at_loss",
    "attention_map",
    "cmkd_fused_terms",
    "cmkd_loss",
    "cmkd_terms",
    "crd_nce_loss",
    "default_regularization_strength",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "fast_teacher_stats",
    "fitnet_loss",
    "hcl_loss",
    "kd_loss",
    "lskd_loss",
    "nkd_loss",
    "nkd_terms",
    "ofd_loss",
    "ofd_margin",
    "ofd_partial_l2",
    "pairwise_distances",
    "pearson_corr",
    "perplexity_scale",
    "rank",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "soft_rank",
    "spearman_corr",
    "teacher_stats",
    "zscore",
]
