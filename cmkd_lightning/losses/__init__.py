"""Distillation losses as ``nn.Module``: thin wrappers over :mod:`cmkd_lightning.functional`."""

from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.losses.cmkd import CMKDLoss
from cmkd_lightning.losses.dist import DISTLoss
from cmkd_lightning.losses.dkd import DKDLoss
from cmkd_lightning.losses.kd import KDLoss
from cmkd_lightning.losses.lskd import LSKDLoss
from cmkd_lightning.losses.nkd import NKDLoss

__all__ = ["CMKDLoss", "DISTLoss", "DKDLoss", "DistillationLoss", "KDLoss", "LSKDLoss", "NKDLoss"]
