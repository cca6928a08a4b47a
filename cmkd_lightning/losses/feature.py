"""The contract of the feature-based distillation losses: which features they read, and their connectors."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.losses.base import DistillationLoss


def _check_names(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(f"Expected `{name}` to be a list of layer names or None, but got {value!r}.")
    if not value:
        raise InvalidArgumentError(f"Expected `{name}` to name at least one layer, but got an empty list.")
    return list(value)


class FeatureDistillationLoss(DistillationLoss):
    """Base class of the losses on intermediate features (FitNet, AT, RKD, OFD, CRD, ReviewKD).

    Besides the logits, :meth:`forward` receives the student's and the teacher's features named by
    ``student_layers`` / ``teacher_layers``: zoo stage names (:func:`~cmkd_lightning.models.feature_layers`:
    ``"stage2"``, ``"stage3_preact"``, ``"pooled"``, ...) or layer specs of any ``nn.Module``
    (:func:`~cmkd_lightning.models.extract_named_features`: ``"layer2"``, ``"layer2.1.relu:input"``).
    :class:`~cmkd_lightning.DistillationModule` calls :meth:`build` once with both networks (a forward pass on
    zeros of ``input_shape`` in eval mode reads the feature shapes), which resolves the names and creates the
    trainable connectors. The connectors are submodules of the loss: the module's optimiser trains them with the
    student, its checkpoints hold them (``losses.<i>.*``), and the student alone is what
    ``load_weights(..., part="student")`` exports. The module reads only the features some loss asks for.

    Class attributes:
        requires_indices: ``forward`` needs the batch's dataset indices (CRD).
        training_only: the loss is computed in training steps only (CRD's memory bank).

    Args:
        student_layers: feature names of the student; ``None``: the method's default.
        teacher_layers: feature names of the teacher; ``None``: the method's default.
        input_shape: one input sample's shape, e.g. ``[3, 32, 32]`` (CIFAR), ``[3, 224, 224]`` (ImageNet).
        warmup_epochs: see :class:`DistillationLoss`.
    """

    requires_indices: ClassVar[bool] = False
    training_only: ClassVar[bool] = False

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(warmup_epochs)
        self.student_layers = _check_names(student_layers, "student_layers")
        self.teacher_layers = _check_names(teacher_layers, "teacher_layers")
        if isinstance(input_shape, (str, bytes)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
        ):
            raise InvalidArgumentError(
                f"Expected `input_shape` to be a list of positive integers, but got {input_shape!r}."
            )
        self.input_shape = list(input_shape)
        self.student_specs: list[str] = []
        self.teacher_specs: list[str] = []

    # ----------------------------------------------------------------------------------------------- building
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        """The method's feature names of ``model`` (``role``: ``"student"`` or ``"teacher"``)."""
        raise InvalidArgumentError(
            f"Expected `{role}_layers` to be given for {type(self).__name__}, but got None and it has no default."
        )

    @staticmethod
    def stage_names(model: nn.Module, preact: bool = False) -> list[str]:
        """``stage1``, ``stage2``, ... of a zoo model (their ``_preact`` names when ``preact``)."""
        from cmkd_lightning.models import feature_layers

        names = [n for n in feature_layers(model) if n.startswith("stage") and n.endswith("_preact") == preact]
        if not names:
            raise InvalidArgumentError(
                f"Expected {type(model).__name__} to name {'pre-activation ' if preact else ''}stage features, "
                "but it names none: pass the layers explicitly."
            )
        return names

    def build(self, student: nn.Module, teacher: nn.Module) -> None:
        """Resolve the feature names of both networks and create the connectors from the features' shapes."""
        from cmkd_lightning.models import extract_named_features, feature_layers

        shapes = {}
        for role, model, names in (
            ("student", student, self.student_layers),
            ("teacher", teacher, self.teacher_layers),
        ):
            names = self.default_layers(role, model) if names is None else names
            try:
                stages = feature_layers(model)
            except TypeError:
                stages = {}
            specs = [stages.get(n, n) for n in names]
            param = next(iter(model.parameters()), None)
            like = {} if param is None else {"device": param.device, "dtype": param.dtype}
            x = torch.zeros(1, *self.input_shape, **like)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    feats, _ = extract_named_features(model, x, {f"{i}": s for i, s in enumerate(specs)})
            finally:
                model.train(was_training)
            setattr(self, f"{role}_specs", specs)
            shapes[role] = [tuple(f.shape[1:]) for f in feats.values()]
        self.build_connectors(shapes["student"], shapes["teacher"], student, teacher)

    def build_connectors(
        self,
        student_shapes: list[tuple[int, ...]],
        teacher_shapes: list[tuple[int, ...]],
        student: nn.Module,
        teacher: nn.Module,
    ) -> None:
        """Create the trainable connectors from the feature shapes (without the batch dimension); none by default."""

    # ------------------------------------------------------------------------------------------------ forward
    @abstractmethod
    def forward(  # type: ignore[override]
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor | None = None,
        *,
        student_features: Sequence[Tensor],
        teacher_features: Sequence[Tensor],
        indices: Tensor | None = None,
        contrast_indices: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            student_logits: ``(N, C)``.
            teacher_logits: ``(N, C)``.
            targets: ``(N,)`` class indices.
            student_features: the student's features, in the order of :attr:`student_specs`.
            teacher_features: the teacher's features, in the order of :attr:`teacher_specs`.
            indices: ``(N,)`` dataset indices of the samples (:attr:`requires_indices`).
            contrast_indices: ``(N, K + 1)`` the positive's and ``K`` negatives' indices, when the data supplies them.

        Returns:
            ``{"loss": scalar, <component>: detached scalar, ...}``.
        """
