"""The one methods table of the experiment tools: a name -> the losses, their weights and the module's CE weight.

``cmkd-quickstart``, ``cmkd-compare`` and ``benchmarks/teacher_zoo/compare_zoo.py`` read their built-in method names
from :data:`BUILTIN_METHODS` only, so a name means the same training everywhere (``kd_ce1`` is CE 1 + KD 1 in every
table). ``cmkd-compare`` also accepts ``cmkd`` YAML configs (:func:`method_from_config`) and :class:`Method` objects.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmkd_lightning.errors import ConfigFileNotFoundError, InvalidArgumentError
from cmkd_lightning.losses import CMKDLoss, DISTLoss, KDLoss, ReviewKDLoss
from cmkd_lightning.losses.base import DistillationLoss


class MethodError(InvalidArgumentError):
    """A method name, config or list that cannot be used; the commands print the message as one line."""


@dataclass
class Method:
    """One way of training the student: distillation losses, their weights and the cross-entropy weight.

    The student's loss is ``ce_weight * CE(z_s, y) + sum_i loss_weights[i] * losses()[i](z_s, z_t)``.

    Args:
        name: label in tables and files.
        losses: builds fresh loss objects for every run (``lambda: [KDLoss(4.0)]``); empty for cross-entropy only.
        loss_weights: one weight per loss.
        ce_weight: weight of the cross-entropy on labels (the module's ``ce_weight``).
        description: one line for ``--help`` and the table's legend.

    Example:
        >>> m = Method("kd", lambda: [KDLoss(temperature=4.0)], [0.9], ce_weight=0.1)
        >>> m.name, type(m.losses()[0]).__name__
        ('kd', 'KDLoss')
    """

    name: str
    losses: Callable[[], list[DistillationLoss]] = field(default=lambda: [])
    loss_weights: list[float] = field(default_factory=list)
    ce_weight: float = 1.0
    description: str = ""


# The digits CNNs' stages ReviewKD reads (examples/configs/digits/reviewkd.yaml): the student's two stages and pooled
# features against the teacher's last two and pooled.
DIGITS_STUDENT_STAGES = ("stage1", "stage2", "pooled")
DIGITS_TEACHER_STAGES = ("stage2", "stage3", "pooled")


def _review() -> ReviewKDLoss:
    return ReviewKDLoss(DIGITS_STUDENT_STAGES, DIGITS_TEACHER_STAGES, warmup_epochs=2)


BUILTIN_METHODS: dict[str, Method] = {
    "ce": Method("ce", description="cross-entropy only (no teacher)"),
    "kd": Method("kd", lambda: [KDLoss(temperature=4.0)], [0.9], 0.1, "CE 0.1 + KD 0.9, T = 4 (KD's recipe weights)"),
    "kd_ce1": Method("kd_ce1", lambda: [KDLoss(temperature=4.0)], [1.0], 1.0, "CE 1 + KD 1, T = 4"),
    "dist": Method(
        "dist",
        lambda: [DISTLoss(temperature=4.0, beta=1.0, gamma=1.0)],
        [2.0],
        1.0,
        "CE 1 + 2 * DIST (tau = 4, beta = gamma = 1)",
    ),
    "cmkd": Method("cmkd", lambda: [CMKDLoss()], [1.0], 1.0, "CE 1 + CMKDLoss() defaults (T = 4, beta = 4, gamma = 1)"),
    "cmkd_pearson": Method(
        "cmkd_pearson",
        lambda: [CMKDLoss(spearman=False)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(spearman=False): the Pearson term only (the Table VI ablation switch)",
    ),
    "cmkd_paper": Method(
        "cmkd_paper",
        lambda: [CMKDLoss.paper(temperature=4.0, beta=4.0, gamma=1.0)],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss.paper(T = 4, beta = 4, gamma = 1): Eq. 16 as written",
    ),
    "cmkd_loss_entropy": Method(
        "cmkd_loss_entropy",
        lambda: [CMKDLoss(entropy_source="loss")],
        [1.0],
        1.0,
        "CE 1 + CMKDLoss(entropy_source='loss'): Eq. 14's entropy of softmax(zscore(z_t) / T)",
    ),
    "reviewkd": Method(
        "reviewkd",
        lambda: [_review()],
        [1.0],
        1.0,
        "CE 1 + ReviewKD (two stages and the pooled features, 2-epoch warm-up): a feature method",
    ),
    "reviewkd_cmkd": Method(
        "reviewkd_cmkd",
        lambda: [_review(), CMKDLoss()],
        [1.0, 1.0],
        1.0,
        "CE 1 + ReviewKD + CMKDLoss() defaults: a feature and a logit loss in one list",
    ),
}


def methods_help(names: Sequence[str] | None = None) -> str:
    """The built-in methods, one per line (``name: description``), for a command's ``--help``.

    Example:
        >>> print(methods_help(["ce", "kd_ce1"]))
          ce                 cross-entropy only (no teacher)
          kd_ce1             CE 1 + KD 1, T = 4
    """
    chosen = list(BUILTIN_METHODS) if names is None else list(names)
    width = max(len(n) for n in BUILTIN_METHODS) + 2
    return "\n".join(f"  {n:<{width}}{BUILTIN_METHODS[n].description}" for n in chosen)


def method_from_config(path: str | Path) -> Method:
    """A :class:`Method` from a ``cmkd`` YAML config: its ``model.init_args`` losses, weights and CE weight.

    Only the loss part of the config is used (the student, teacher, data and schedule are the comparison's).

    Args:
        path: a ``cmkd fit`` config such as ``examples/configs/digits/cmkd.yaml``.

    Returns:
        A method named after the file's stem.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFoundError(
            f"Expected `methods` entries to be built-in names or config files, but {path} is neither."
        )
    config = yaml.safe_load(path.read_text()) or {}
    init = (config.get("model") or {}).get("init_args") or {}
    specs = init.get("losses") or []
    if isinstance(specs, dict):
        specs = [specs]

    def build() -> list[DistillationLoss]:
        losses = []
        for spec in specs:
            module_name, _, cls_name = spec["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module_name), cls_name)
            losses.append(cls(**(spec.get("init_args") or {})))
        return losses

    weights = [float(w) for w in init.get("loss_weights") or [1.0] * len(specs)]
    return Method(path.stem, build, weights, float(init.get("ce_weight", 1.0)), f"from {path}")


def resolve_methods(entries: Sequence[str | Method]) -> list[Method]:
    """Built-in names, config paths or :class:`Method` objects to methods (names must be unique).

    Example:
        >>> [m.ce_weight for m in resolve_methods(["kd", "kd_ce1"])]
        [0.1, 1.0]
    """
    methods = []
    for entry in entries:
        if isinstance(entry, Method):
            methods.append(entry)
        elif entry in BUILTIN_METHODS:
            methods.append(BUILTIN_METHODS[entry])
        elif str(entry).endswith((".yaml", ".yml")):
            methods.append(method_from_config(entry))
        else:
            raise MethodError(
                f"Expected each method to be one of {sorted(BUILTIN_METHODS)} or a .yaml config, but got {entry!r}."
            )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MethodError(f"Expected unique method names, but got {names}.")
    return methods


def method_config(method: Method) -> dict[str, Any]:
    """A method's resolved configuration: CE weight, loss weights, and every loss's class and scalar settings.

    Read from freshly built loss objects, so a changed default (e.g. of :class:`~cmkd_lightning.losses.CMKDLoss`) or
    an edited YAML changes it; the method's name is not part of it.

    Example:
        >>> method_config(Method("x", lambda: [KDLoss(temperature=2.0)], [1.0]))["losses"][0]["settings"]["temperature"]
        2.0
    """
    losses = []
    for loss in method.losses():
        settings = {k: v for k, v in sorted(vars(loss).items()) if isinstance(v, (bool, int, float, str, type(None)))}
        settings.pop("training", None)
        losses.append({"class": f"{type(loss).__module__}.{type(loss).__qualname__}", "settings": settings})
    return {"ce_weight": method.ce_weight, "loss_weights": list(method.loss_weights), "losses": losses}


def method_fingerprint(method: Method) -> str:
    """SHA-256 of :func:`method_config`: what identifies a method's training, whatever it is called."""
    return hashlib.sha256(json.dumps(method_config(method), sort_keys=True, default=repr).encode()).hexdigest()
