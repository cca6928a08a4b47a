"""The model summary ``cmkd fit`` prints when training starts: the networks, what trains, what is frozen."""

from __future__ import annotations

import sys
from typing import TextIO

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

__all__ = ["ModelOverview", "count"]


def count(n: int) -> str:
    """A parameter count as a person reads it: ``950``, ``4.6 K``, ``84.9 K``, ``11.7 M``, ``1.2 B``.

    Example:
        >>> count(950), count(4620), count(11_689_512)
        ('950', '4.6 K', '11.7 M')
    """
    for size, unit in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def _parts(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of ``module``."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


class ModelOverview(Callback):
    r"""Print the networks of the module when ``fit`` starts: each child with parameters, then the totals.

    Replaces Lightning's table in ``cmkd fit`` (which lists metric containers with 0 parameters and a FLOPs column
    that reads 0 until a forward pass is traced). For a distillation run::

        Model: DistillationModule
          student  DigitsCNN   4.6 K parameters, trainable
          teacher  DigitsCNN  84.9 K parameters, frozen (eval mode)
          losses   KDLoss
        Parameters: 4.6 K trainable, 84.9 K frozen, 89.5 K in all (0.36 MB)

    Children without parameters are left out, except ``losses``, named by class; a
    :class:`~cmkd_lightning.TeacherModule`'s network shows as ``model``. Printed on global rank 0.

    Args:
        stream: where to print (default: ``sys.stdout`` at print time).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[ModelOverview()], enable_model_summary=False, logger=False)
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def render(self, pl_module: LightningModule) -> str:
        """The summary text of ``pl_module`` (what :meth:`on_fit_start` prints)."""
        rows: list[tuple[str, str, str, str]] = []  # name, class, parameter count, trainable / frozen
        for name, child in pl_module.named_children():
            trainable, frozen = _parts(child)
            if trainable + frozen == 0:
                if name == "losses" and isinstance(child, nn.ModuleList) and len(child):
                    rows.append((name, ", ".join(type(loss).__name__ for loss in child), "", ""))
                continue
            if frozen == 0:
                state = "trainable"
            elif trainable == 0:
                state = "frozen" + ("" if child.training else " (eval mode)")
            else:
                state = f"{count(trainable)} trainable, {count(frozen)} frozen"
            if name == "student" and isinstance(getattr(type(pl_module), "model", None), property):
                name = "model"  # TeacherModule keeps its network as `student` (checkpoint layout) and calls it model
            rows.append((name, type(child).__name__, count(trainable + frozen), state))
        trainable, frozen = _parts(pl_module)
        megabytes = sum(p.numel() * p.element_size() for p in pl_module.parameters()) / 1e6
        counted = [r for r in rows if r[2]]
        widths = [max((len(r[i]) for r in (rows if i == 0 else counted)), default=0) for i in range(3)]
        lines = [f"Model: {type(pl_module).__name__}"]
        for name, kind, n, state in rows:
            if n:
                lines.append(f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {n:>{widths[2]}} parameters, {state}")
            else:
                lines.append(f"  {name:<{widths[0]}}  {kind}")
        lines.append(
            f"Parameters: {count(trainable)} trainable, {count(frozen)} frozen, {count(trainable + frozen)} in all "
            f"({megabytes:.2f} MB)"
        )
        return "\n".join(lines)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print(self.render(pl_module), file=self.stream or sys.stdout, flush=True)
