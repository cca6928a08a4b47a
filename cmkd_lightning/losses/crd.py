"""CRD's module: embeddings, the memory bank of both views and the NCE loss (``crd_nce_loss``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError, UsageError
from cmkd_lightning.functional.crd import crd_nce_loss
from cmkd_lightning.losses.feature import FeatureDistillationLoss
from cmkd_lightning.utilities.validation import check_positive


class Embedding(nn.Module):
    """Flatten, a linear map to ``dim`` and L2 normalisation (the reference's ``Embed``; default init)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, ...) -> (N, dim)`` unit rows."""
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class CRDLoss(FeatureDistillationLoss):
    """Contrastive representation distillation (Tian et al., ICLR 2020) with a memory bank of negatives.

    Components: ``student_nce_loss`` and ``teacher_nce_loss`` (the loss is their sum). Both pooled features are
    embedded (:class:`Embedding`, trainable connectors) to ``feature_dim``; each is scored against the other
    view's memory (``num_samples x feature_dim`` buffers, uniform in ``±sqrt(3 / feature_dim)`` at the start) at the
    positive's and ``num_negatives`` negatives' rows: ``exp(v·m / temperature) / Z``, with ``Z`` fixed in the first
    training step to ``mean * num_samples``. After each training step the positives' rows move to
    ``normalise(momentum · m + (1 - momentum) · v)``. All on the student's device, with no host reads.

    The batch must carry the samples' dataset indices (third item) and, as the reference's data does, the
    contrast indices ``(N, K + 1)`` (fourth item: the sample itself, then ``K`` samples of other classes;
    ``contrastive_negatives`` of the data modules). Without them, negatives are drawn uniformly over the data set
    on the device (the reference's fallback). CRD is a training term only (``training_only``): validation has no
    memory rows. Under DDP, DDP's buffer broadcast gives every rank rank 0's memory bank
    (``docs/FEATURE_BASELINES.md``). Defaults: the reference's 128 dimensions, 16,384 negatives, temperature 0.07,
    momentum 0.5, the ``"pooled"`` features, loss weight 0.8, cross-entropy 1.

    Args:
        num_samples: size of the training set (rows of the memory bank), e.g. 50,000 for CIFAR-100.
        feature_dim: embedding dimension.
        num_negatives: ``K``.
        temperature: NCE temperature.
        momentum: memory update momentum.
        eps: NCE epsilon.
        student_layers: one feature name (default ``["pooled"]``).
        teacher_layers: one feature name (default ``["pooled"]``).
        input_shape: see :class:`FeatureDistillationLoss`.
        warmup_epochs: see :class:`DistillationLoss`.
    """

    name = "crd"
    recommended_weight = 0.8
    recommended_ce_weight = 1.0
    requires_indices = True
    training_only = True

    def __init__(
        self,
        num_samples: int,
        feature_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        eps: float = 1e-7,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(student_layers, teacher_layers, input_shape, warmup_epochs)
        for name, value in (
            ("num_samples", num_samples),
            ("feature_dim", feature_dim),
            ("num_negatives", num_negatives),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"Expected `{name}` to be a positive integer, but got {value!r}.")
        check_positive(temperature, "temperature")
        check_positive(eps, "eps")
        if not 0.0 <= momentum < 1.0:
            raise InvalidArgumentError(f"Expected `momentum` to be in [0, 1), but got {momentum!r}.")
        self.num_samples, self.feature_dim, self.num_negatives = num_samples, feature_dim, num_negatives
        self.temperature, self.momentum, self.eps = temperature, momentum, eps
        self.embed_student: Embedding | None = None
        self.embed_teacher: Embedding | None = None

    @override
    def default_layers(self, role: str, model: nn.Module) -> list[str]:
        return ["pooled"]

    @override
    def build_connectors(self, student_shapes, teacher_shapes, student, teacher) -> None:  # type: ignore[no-untyped-def]
        self.embed_student = Embedding(math.prod(student_shapes[0]), self.feature_dim)
        self.embed_teacher = Embedding(math.prod(teacher_shapes[0]), self.feature_dim)
        bound = 1.0 / math.sqrt(self.feature_dim / 3)
        like = self.embed_student.linear.weight
        for view in ("student", "teacher"):
            memory = torch.rand(self.num_samples, self.feature_dim, dtype=like.dtype).mul_(2 * bound).add_(-bound)
            self.register_buffer(f"memory_{view}", memory)
        self.register_buffer("normalisers", torch.full((2,), -1.0, dtype=like.dtype))

    def _scores(self, v: Tensor, memory: Tensor, idx: Tensor) -> Tensor:
        rows = memory.index_select(0, idx.reshape(-1)).detach().view(idx.shape[0], idx.shape[1], -1)
        return torch.exp(torch.bmm(rows, v.unsqueeze(2)).squeeze(2) / self.temperature)

    def _update(self, memory: Tensor, v: Tensor, indices: Tensor) -> None:
        rows = memory.index_select(0, indices) * self.momentum + v.detach() * (1 - self.momentum)
        memory.index_copy_(0, indices, rows / rows.pow(2).sum(1, keepdim=True).sqrt())

    @override
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
        if self.embed_student is None or self.embed_teacher is None:
            raise UsageError("CRDLoss has no embeddings yet: call `build(student, teacher)` first.")
        if indices is None:
            raise InvalidArgumentError(
                "Expected the batch to carry the samples' dataset `indices` (its third item) for CRD, but got none: "
                "set the data module's `contrastive_negatives`."
            )
        vs = self.embed_student(student_features[0])
        vt = self.embed_teacher(teacher_features[0].detach())
        indices = indices.reshape(-1).long()
        if contrast_indices is None:
            contrast_indices = torch.randint(
                0, self.num_samples, (indices.shape[0], self.num_negatives + 1), device=indices.device
            )
            contrast_indices[:, 0] = indices
        idx = contrast_indices.long()
        out_t = self._scores(vt, self.memory_student, idx)  # teacher view against the student memory
        out_s = self._scores(vs, self.memory_teacher, idx)  # student view against the teacher memory
        if self.training:
            fresh = torch.stack([out_s.detach().mean(), out_t.detach().mean()]) * self.num_samples
            self.normalisers.copy_(torch.where(self.normalisers < 0, fresh, self.normalisers))
        out_s = out_s / self.normalisers[0]
        out_t = out_t / self.normalisers[1]
        if self.training:
            with torch.no_grad():
                self._update(self.memory_student, vs, indices)
                self._update(self.memory_teacher, vt, indices)
        student_nce = crd_nce_loss(out_s, self.num_samples, eps=self.eps)
        teacher_nce = crd_nce_loss(out_t, self.num_samples, eps=self.eps)
        return {
            "loss": student_nce + teacher_nce,
            "student_nce_loss": student_nce.detach(),
            "teacher_nce_loss": teacher_nce.detach(),
        }
