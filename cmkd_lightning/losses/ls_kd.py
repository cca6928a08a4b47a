"""Deprecated module name: the method is spelled ``lskd``; import from :mod:`cmkd_lightning.losses`."""

import warnings

from cmkd_lightning.losses.lskd import LSKDLoss

warnings.warn(
    "`cmkd_lightning.losses.ls_kd` is deprecated; import `LSKDLoss` from `cmkd_lightning.losses`.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LSKDLoss"]
