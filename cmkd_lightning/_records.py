"""What a :class:`~cmkd_lightning.DistillationModule` run records about itself, and how it is rebuilt from that.

Losses are recorded as LightningCLI ``class_path`` configs (:meth:`DistillationLoss.to_config`) and rebuilt from
them; networks passed as ``nn.Module`` objects cannot be rebuilt from a checkpoint, so the checkpoint names their
classes and :func:`reload_hint` turns the bare "missing argument" error of ``load_from_checkpoint`` into what to
pass.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from cmkd_lightning.losses.base import DistillationLoss

# Checkpoint key listing the arguments that were nn.Module objects: {argument: "package.module.ClassName"}.
MODULES_KEY = "cmkd_modules_to_pass"


def build_loss(spec: Any, where: str) -> Any:
    """``spec`` itself, or the loss a ``{"class_path": ..., "init_args": {...}}`` config describes."""
    if not isinstance(spec, Mapping):
        return spec
    class_path = spec.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(
            f"Expected `{where}` to be a DistillationLoss or a config with a `class_path` such as "
            f"'cmkd_lightning.losses.CMKDLoss', but got {dict(spec)!r}."
        )
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Expected `{where}.class_path` to name an importable class, but got {class_path!r}.") from err
    if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
        raise TypeError(f"Expected `{where}.class_path` to name a DistillationLoss subclass, but got {class_path!r}.")
    return cls(**dict(spec.get("init_args") or {}))


def loss_configs(losses: list[DistillationLoss]) -> list[dict[str, Any]] | None:
    """Every loss as a ``class_path`` config, or ``None`` (with a warning) when one cannot be recorded."""
    try:
        return [loss.to_config() for loss in losses]
    except AttributeError as err:
        rank_zero_warn(f"The losses are not recorded in the hyperparameters: {err} Pass `losses` again to reload.")
        return None


def modules_passed(hparams_before: Mapping[str, Any], signature_of: type) -> dict[str, str]:
    """``{argument: class path}`` for each argument of ``signature_of.__init__`` given as ``nn.Module`` object(s)."""
    names = inspect.signature(signature_of.__init__).parameters
    found: dict[str, str] = {}
    for key, value in hparams_before.items():
        if key not in names:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        classes = [f"{type(v).__module__}.{type(v).__qualname__}" for v in items if isinstance(v, nn.Module)]
        if classes:
            found[key] = ", ".join(classes)
    return found


def record(module: Any, updates: Mapping[str, Any], keep_only: type | None = None) -> None:
    """Write ``updates`` into ``module.hparams`` (checkpoint) and its initial copy (what loggers receive).

    ``keep_only``: drop every hyperparameter that is not an ``__init__`` argument of this class (a subclass with its
    own signature, e.g. :class:`~cmkd_lightning.TeacherModule`), keeping Lightning's own ``_``-prefixed keys.
    """
    hparams = module.hparams
    hparams.update(updates)
    if keep_only is not None:
        names = inspect.signature(keep_only.__init__).parameters
        for key in [k for k in hparams if k not in names and not k.startswith("_")]:
            del hparams[key]
    # Lightning logs `hparams_initial`, a copy taken when save_hyperparameters ran; keep it in step.
    module._hparams_initial = copy.deepcopy(module._hparams)


def reload_hint(cls: type, checkpoint_path: Any, given: Mapping[str, Any]) -> str | None:
    """What to pass to ``cls.load_from_checkpoint`` for a checkpoint built with ``nn.Module`` arguments, or None."""
    from lightning.fabric.utilities.cloud_io import _load as pl_load

    try:
        checkpoint = pl_load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable here too: the original error says more
        return None
    passed = {k: v for k, v in (checkpoint.get(MODULES_KEY) or {}).items() if k not in given}
    if not passed:
        return None
    built = ", ".join(f"{k}=<{v} nn.Module>" for k, v in passed.items())
    needed = ", ".join(f"{k}=..." for k in passed)
    return (
        f"This checkpoint was built with {built}, which it does not store (only its weights); pass {needed} to "
        f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}, {needed})."
    )
