"""The ``check_finite`` guard of :class:`~cmkd_lightning.DistillationModule`: one flag read per checked step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_every(check_finite: Any) -> int:
    """``check_finite`` as a step interval: ``True`` -> 1 (every step), ``False``/``0`` -> never."""
    if not isinstance(check_finite, (bool, int)) or check_finite < 0:
        raise ValueError(
            f"Expected `check_finite` to be a bool or an integer >= 0 (check every n-th step), but got "
            f"{check_finite!r}."
        )
    return int(check_finite)


def add_extra_terms(terms: dict[str, Tensor], extra: dict[str, Tensor], owner: str) -> dict[str, Tensor]:
    """Add a subclass's ``extra_losses`` to the total; each is kept under its own key (shape checks only)."""
    for key, value in extra.items():
        if key in terms:
            raise ValueError(
                f"Expected the keys of `{owner}.extra_losses` to differ from the module's own {sorted(terms)}, "
                f"but got {key!r}."
            )
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"Expected `{owner}.extra_losses()[{key!r}]` to be a scalar tensor, but got {shape}.")
        terms["loss"] = terms["loss"] + value.float()
        terms[key] = value
    return terms


def where(stage: str, batch_idx: int, global_step: int, epoch: int) -> str:
    """The step a guard error names."""
    if stage == "train":
        return f"train global step {global_step} (epoch {epoch})"
    return f"{stage} batch {batch_idx} (global step {global_step}, epoch {epoch})"


def raise_if_not_finite(terms: dict[str, Tensor], stage: str, student_logits: Tensor, where: str) -> None:
    """Raise ``FloatingPointError`` naming what is NaN/Inf; one host-device sync (a single flag) otherwise."""
    flags = [torch.isfinite(t.detach()).all() for t in terms.values()]
    flags.append(torch.isfinite(student_logits.detach()).all())
    if bool(torch.stack(flags).all()):
        return
    after = (
        "Training stopped before the optimiser step, so the weights and the last saved checkpoint are intact."
        if stage == "train"
        else f"The weights reached {stage} non-finite or produce non-finite outputs on this batch."
    )
    if not bool(torch.isfinite(student_logits.detach()).all()):
        raise FloatingPointError(
            f"Non-finite student logits at {where}: the student's forward pass produced NaN/Inf before any loss. "
            f"{after} Lower the learning rate or check the data."
        )
    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
    raise FloatingPointError(
        f"Non-finite loss at {where}: {', '.join(f'{stage}/{k}' for k in bad)} is NaN/Inf. {after} Lower the "
        "learning rate, check the data or the teacher checkpoint."
    )
