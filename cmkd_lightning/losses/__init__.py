"""Distillation losses as ``nn.Module``: thin wrappers over :mod:`cmkd_lightning.functional`."""

from cmkd_lightning.losses.at import ATLoss
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.losses.cmkd import CMKDLoss
from cmkd_lightning.losses.crd import CRDLoss
from cmkd_lightning.losses.dist import DISTLoss
from cmkd_lightning.losses.dkd import DKDLoss
from cmkd_lightning.losses.feature import FeatureDistillationLoss as FeatureDistillationLoss
from cmkd_lightning.losses.fitnet import FitNetLoss
from cmkd_lightning.losses.kd import KDLoss
from cmkd_lightning.losses.lskd import LSKDLoss
from cmkd_lightning.losses.nkd import NKDLoss
from cmkd_lightning.losses.ofd import OFDLoss
from cmkd_lightning.losses.reviewkd import ReviewKDLoss
from cmkd_lightning.losses.rkd import RKDLoss

# FeatureDistillationLoss (the feature losses' base class) is importable from here but not in __all__, which
# `cmkd list losses` lists as the losses to configure.
__all__ = [
    "ATLoss",
    "CMKDLoss",
    "CRDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FitNetLoss",
    "KDLoss",
    "LSKDLoss",
    "NKDLoss",
    "OFDLoss",
    "RKDLoss",
    "ReviewKDLoss",
]
