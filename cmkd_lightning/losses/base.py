"""The contract every distillation loss module follows."""

from __future__ import annotations

import inspect
import sys
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError


class DistillationLoss(nn.Module, ABC):
    """Base class of the distillation losses.

    A loss maps ``(student_logits, teacher_logits, targets)`` to a dict holding a differentiable ``"loss"`` (the
    loss's own internal weights applied) and detached components for logging: a term that is part of the loss is
    named ``<term>_loss`` (lower is better), a diagnostic keeps a plain name (``hard_fraction``); the logged keys
    are listed in ``docs/METRICS.md``. Global weights, the
    cross-entropy on labels and the warm-up schedule are applied by the module that sums the losses
    (:class:`~cmkd_lightning.DistillationModule`), which calls :meth:`warmup_factor` with the trainer's epoch.

    Teacher logits are detached inside every loss: no gradient reaches the teacher.

    Every subclass stores each ``__init__`` argument as an attribute of the same name; :meth:`init_args`,
    ``repr`` and :meth:`to_config` read them from there, so a new argument is recorded without further code.

    Class attributes:
        name: short key used in logged metric names (``train/<name>/<component>``).
        requires_targets: whether ``forward`` needs ``targets``.
        recommended_weight: the weight ``w_k`` the method's authors ran it with; the module's default when
            ``loss_weights`` is not given.
        recommended_ce_weight: the cross-entropy weight the method's recipe fixes, or ``None`` when it fixes none;
            the module's default ``ce_weight`` when all its losses agree (``docs/DEFAULTS.md``).

    Args:
        warmup_epochs: length of a linear warm-up of this loss, ``0`` for none; the factor in epoch ``e``
            (0-based, as Lightning counts) is ``min((e + 1) / warmup_epochs, 1)``, the reference code's
            ``min(epoch / warmup, 1)`` with epochs counted from 1.
    """

    name: ClassVar[str] = "distill"
    requires_targets: ClassVar[bool] = False
    recommended_weight: ClassVar[float] = 1.0
    recommended_ce_weight: ClassVar[float | None] = None

    def __init__(self, warmup_epochs: int = 0) -> None:
        super().__init__()
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise InvalidArgumentError(f"Expected `warmup_epochs` to be an integer >= 0, but got {warmup_epochs!r}.")
        self.warmup_epochs = warmup_epochs

    def warmup_factor(self, epoch: int) -> float:
        """Multiplier of this loss in (0-based) ``epoch``: a linear ramp over ``warmup_epochs``, then 1."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    @abstractmethod
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            student_logits: ``(N, C)`` student logits.
            teacher_logits: ``(N, C)`` teacher logits.
            targets: ``(N,)`` class indices; required when :attr:`requires_targets` is true.

        Returns:
            ``{"loss": scalar, <component>: detached scalar, ...}``.
        """

    def init_args(self) -> dict[str, Any]:
        """Every ``__init__`` argument of this loss with the value it was built with.

        Raises:
            AttributeError: when a subclass did not store an argument as an attribute of the same name.
        """
        args: dict[str, Any] = {}
        for param in inspect.signature(type(self).__init__).parameters.values():
            if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not hasattr(self, param.name):
                raise AttributeError(
                    f"Expected {type(self).__name__} to store its `__init__` argument `{param.name}` as "
                    f"`self.{param.name}` (the DistillationLoss contract), but it has no such attribute."
                )
            args[param.name] = getattr(self, param.name)
        return args

    def to_config(self) -> dict[str, Any]:
        """Return this loss as a LightningCLI ``class_path`` / ``init_args`` config, which rebuilds it.

        Example:
            >>> from cmkd_lightning.losses import KDLoss
            >>> config = KDLoss(temperature=2.0).to_config()
            >>> config["class_path"], config["init_args"]["temperature"], config["init_args"]["warmup_epochs"]
            ('cmkd_lightning.losses.KDLoss', 2.0, 0)
            >>> type(KDLoss(**config["init_args"])).__name__
            'KDLoss'
        """
        return {"class_path": _class_path(type(self)), "init_args": self.init_args()}

    @override
    def extra_repr(self) -> str:
        try:
            args = self.init_args()
        except AttributeError:
            return ""
        return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _class_path(cls: type) -> str:
    """Import path of ``cls``, the public package's (``cmkd_lightning.losses.KDLoss``) when it exports the class."""
    module = cls.__module__
    parent = module.rpartition(".")[0]
    if parent and getattr(sys.modules.get(parent), cls.__qualname__, None) is cls:
        module = parent
    return f"{module}.{cls.__qualname__}"
