"""Deprecated module name: the method is spelled ``lskd``; import from :mod:`cmkd_lightning.functional.lskd`."""

import warnings

from cmkd_lightning.functional.lskd import ls_kd_loss, lskd_loss

warnings.warn(
    "`cmkd_lightning.functional.ls_kd` is deprecated; import `lskd_loss` from `cmkd_lightning.functional`.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ls_kd_loss", "lskd_loss"]
