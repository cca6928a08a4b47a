"""Classes a user's config might name, for the build-error tests: each fails in its ``__init__``."""

from __future__ import annotations

from cmkd_lightning.losses.kd import KDLoss


class RefusingLoss(KDLoss):
    """A user's loss whose own check raises a plain ValueError (not a CMKDError)."""

    def __init__(self, temperature: float = 4.0) -> None:
        raise ValueError(f"RefusingLoss: the user's own check refused temperature={temperature}.")
