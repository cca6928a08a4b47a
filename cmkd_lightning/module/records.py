"""What a :class:`~cmkd_lightning.DistillationModule` run records about itself, and how it is rebuilt from that.

Losses are recorded as LightningCLI ``class_path`` configs (:meth:`DistillationLoss.to_config`) and rebuilt from
them; networks passed as ``nn.Module`` objects cannot be rebuilt from a checkpoint, so the checkpoint names their
classes and :func:`reload_hint` turns the bare "missing argument" error of ``load_from_checkpoint`` into what to
pass.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.losses.base import DistillationLoss

# Checkpoint key listing the arguments that were nn.Module objects: {argument: "package.module.ClassName"}.
MODULES_KEY = "cmkd_modules_to_pass"


def build_loss(spec: Any, where: str) -> Any:
    """``spec`` itself, or the loss a ``{"class_path": ..., "init_args": {...}}`` config describes."""
    if not isinstance(spec, Mapping):
        return spec
    class_path = spec.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise InvalidArgumentError(
            f"Expected `{where}` to be a DistillationLoss or a config with a `class_path` such as "
            f"'cmkd_lightning.losses.CMKDLoss', but got {dict(spec)!r}."
        )
    cls = _import_class(class_path, where)
    if not issubclass(cls, DistillationLoss):
        raise ArgumentTypeError(
            f"Expected `{where}.class_path` to name a DistillationLoss subclass, but got {class_path!r}."
        )
    return cls(**dict(spec.get("init_args") or {}))


def _import_class(class_path: Any, where: str) -> type:
    if not isinstance(class_path, str) or "." not in class_path:
        raise InvalidArgumentError(f"Expected `{where}.class_path` to be a dotted class path, but got {class_path!r}.")
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InvalidArgumentError(
            f"Expected `{where}.class_path` to name an importable class, but got {class_path!r}."
        ) from err
    if not isinstance(cls, type):
        raise ArgumentTypeError(f"Expected `{where}.class_path` to name a class, but got {class_path!r}.")
    return cls


def build_callable(spec: Any, where: str) -> Callable[..., Any]:
    """``spec`` if callable, else the ``functools.partial`` a ``{"class_path": ..., "init_args": {...}}`` describes.

    This is how ``optimizer`` / ``lr_scheduler`` are read back from recorded hyperparameters (LightningCLI builds
    the same partial from YAML): the first positional argument (parameters or optimiser) is supplied later.
    """
    if isinstance(spec, Mapping):
        if "class_path" not in spec:
            raise InvalidArgumentError(
                f"Expected `{where}` to be a callable or a config with a `class_path` such as 'torch.optim.SGD', "
                f"but got {dict(spec)!r}."
            )
        return functools.partial(_import_class(spec["class_path"], where), **dict(spec.get("init_args") or {}))
    if not callable(spec):
        raise ArgumentTypeError(
            f"Expected `{where}` to be a callable (e.g. a torch.optim class or functools.partial of one), but got "
            f"{type(spec).__name__}."
        )
    return spec


def callable_config(spec: Any) -> dict[str, Any] | None:
    """``spec`` as a ``class_path`` config: a class, a partial of a class (also LightningCLI's), or a config.

    ``None`` when it cannot be written as one (e.g. a lambda).
    """
    if isinstance(spec, Mapping):
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    while isinstance(spec, functools.partial):
        args, kwargs = (*spec.args, *args), {**spec.keywords, **kwargs}
        spec = spec.func
        if not isinstance(spec, type) and args and isinstance(args[-1], type):  # LightningCLI: (instantiator, cls)
            spec, args = args[-1], ()
    if not isinstance(spec, type) or args:
        return None
    init_args = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    return {"class_path": _public_path(spec), "init_args": init_args}


def _public_path(cls: type) -> str:
    """The shortest importable dotted path of ``cls`` (``torch.optim.SGD``, not ``torch.optim.sgd.SGD``)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts)):
        try:
            if getattr(importlib.import_module(".".join(parts[:end])), cls.__qualname__, None) is cls:
                return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
        except ImportError:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"


def callable_configs(modules_to_pass: dict[str, str], **callables: Any) -> dict[str, Any]:
    """The hyperparameter value of each callable argument (``optimizer``, ``lr_scheduler``): its config, or ``None``.

    One that cannot be written as a config (a lambda) is recorded by name only, added to ``modules_to_pass`` so
    that reloading asks for it, and warned about.
    """
    out: dict[str, Any] = {}
    for name, spec in callables.items():
        config = None if spec is None else callable_config(spec)
        if spec is not None and config is None:
            described = f"{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', type(spec).__name__)}"
            rank_zero_warn(
                f"`{name}` ({described}) is not recorded in the hyperparameters (only a class, a functools.partial "
                f"of one or a class_path config can be); pass `{name}` again to reload or resume."
            )
            modules_to_pass[name] = described
            config = f"<not recorded: {described}>"
        out[name] = config
    return out


def save_hyperparameters(module: Any, frame: Any) -> dict[str, str]:
    """``module.save_hyperparameters()`` from ``frame`` (its ``__init__``), without the ``nn.Module`` arguments.

    Networks passed as objects (Python use) live in the state_dict, not the hyperparameters; the returned
    ``{argument: class path}`` is stored in checkpoints so that reloading names them. Under LightningCLI the
    hyperparameters hold their configs and stay.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`")
        module.save_hyperparameters(frame=frame)
    passed = modules_passed(module.hparams, type(module))
    module_valued = [k for k, v in module.hparams.items() if holds_module(v)]
    if module_valued:
        module.save_hyperparameters(ignore=module_valued, frame=frame)
    return passed


def effective_configs(
    modules_to_pass: dict[str, str], losses: list[DistillationLoss], optimizer: Any, lr_scheduler: Any
) -> dict[str, Any]:
    """The losses, optimiser and schedule as ``class_path`` configs, for the hyperparameters."""
    out = callable_configs(modules_to_pass, optimizer=optimizer, lr_scheduler=lr_scheduler)
    configs = loss_configs(losses) if losses else None
    if configs is not None:
        out["losses"] = configs
        modules_to_pass.pop("losses", None)  # rebuilt from their configs
    return out


def holds_module(value: Any) -> bool:
    """Whether ``value`` is an ``nn.Module`` or a list/tuple holding one."""
    if isinstance(value, nn.Module):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value)


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
    # Loggers receive `hparams_initial`, which Lightning copies when save_hyperparameters runs, before these updates;
    # the module's `hparams_initial` property returns this snapshot instead (DistillationModule.hparams_initial).
    module.recorded_hparams = copy.deepcopy(dict(hparams))


def reload_hint(cls: type, checkpoint_path: Any, given: Mapping[str, Any]) -> str | None:
    """What to pass to ``cls.load_from_checkpoint`` for a checkpoint built with ``nn.Module`` arguments, or None."""
    import torch
    from lightning.fabric.utilities.cloud_io import get_filesystem

    try:  # local paths and the remote URLs load_from_checkpoint accepts
        with get_filesystem(checkpoint_path).open(str(checkpoint_path), "rb") as file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
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
