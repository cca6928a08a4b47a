"""Module wrapper of :func:`~cmkd_lightning.functional.cmkd_loss`, with an optional DDP-global threshold."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import override

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional.cmkd import (
    CMKDPreset,
    CMKDScale,
    EntropySource,
    TemperatureUnits,
    check_entropy_source,
    check_perplexity_settings,
    check_temperature_units,
    cmkd_terms,
    resolve_preset,
    resolve_scale,
    teacher_stats,
)
from cmkd_lightning.functional.cmkd_fused import cmkd_fused_terms, fast_teacher_stats, fused_covers
from cmkd_lightning.functional.perplexity import check_perplexity
from cmkd_lightning.losses.base import DistillationLoss
from cmkd_lightning.utilities.validation import check_non_negative, check_positive, upcast

_RANK_BACKENDS = ("auto", "torch", "torchsort")


class CMKDLoss(DistillationLoss):
    """Correlation Matching KD: entropy-weighted Pearson + soft-Spearman loss on z-scored logits.

    See :func:`~cmkd_lightning.functional.cmkd_loss` for the formula (Eq. 9–16), the Eq. 16 / Sec. V-C
    discrepancy (Eq. 16 is followed), the choice of the soft-rank strength (default ``1 / C``), the Pearson scale
    and the entropy of Eq. 14.

    Two presets (``preset``, recorded by ``repr`` and in the hyperparameters like every argument):

    - ``"library"`` (default): the Pearson term times ``sqrt(C)`` (not in the paper) and Eq. 14's entropy of the
      teacher's own ``softmax(z_t)``; any argument may change them.
    - ``"paper"``: Eq. 16 as written, ``pearson_scale="paper"`` (factor 1) and ``entropy_source="loss"`` (the
      entropy of the Pearson term's ``softmax(zscore(z_t) / T)``); an argument that contradicts it raises.
      ``CMKDLoss.paper(temperature=4.0)`` is the same loss. Every config that quotes a paper number runs it.

    Components (detached, batch means): ``pearson_loss`` (``1 - r`` of Eq. 12, unweighted), ``spearman_loss``
    (``1 - rho`` of Eq. 13, unweighted), ``hard_fraction`` (fraction of samples whose Eq. 14 entropy is at or above
    the threshold) and ``teacher_entropy`` (mean Eq. 14 entropy in nats, of the distribution ``entropy_source``
    names).

    Args:
        temperature: ``T`` (4 on CIFAR-100, 1 on ImageNet).
        beta: the larger weight of Eq. 16 (paper: 4).
        gamma: the smaller weight of Eq. 16 (paper: 1).
        regularization_strength: soft-rank ``eps``; ``None`` for ``1 / C``.
        zscore: z-score the logits (Eq. 9–11).
        spearman: include the Spearman term.
        dynamic_weighting: entropy-based swap of the weights.
        temperature_squared: multiply by ``T^2`` (not in the paper).
        pearson_scale: multiply the Pearson term by ``sqrt(C)`` (``"sqrt_classes"``), by 1 (``"paper"``: Eq. 16
            as written) or by a given number; ``None`` (default) takes the preset's (``"sqrt_classes"`` for
            ``"library"``). See :func:`~cmkd_lightning.functional.cmkd.resolve_scale`.
        entropy_source: which distribution's entropy splits the batch (Eq. 14; the paper's notation allows
            both): ``"teacher"`` the teacher's own prediction ``softmax(z_t)``, or ``"loss"`` the probabilities of
            the Pearson term, ``softmax(zscore(z_t) / T)``, whose entropies sit within a fraction of a percent of
            ``log C`` at ``T = 4`` and split a batch almost at random; ``None`` (default) takes the preset's
            (``"teacher"`` for ``"library"``, ``"loss"`` for ``"paper"``).
        temperature_units: what ``T`` divides in the Pearson term: ``"zscore"`` the z-scored logits (Eq. 12 as
            written), ``"logits"`` the teacher's own logit scale (the target is ``softmax(z_t / T)``; see
            :func:`~cmkd_lightning.functional.cmkd_loss`); ``None`` (default) takes the preset's (``"zscore"`` for
            both). ``"logits"`` runs the general path (``fused`` ``"auto"`` or ``False``).
        preset: ``"library"`` (default) or ``"paper"`` (above).
        sync_entropy_threshold: under ``torch.distributed``, use the entropy mean over the *global* batch
            (an all-reduce on every call, so every rank must call the loss on every step). Default: per device.
        eps: z-score epsilon.
        rank_backend: soft-rank backend (``"auto"``, ``"torch"``, ``"torchsort"``).
        warmup_epochs: see :class:`DistillationLoss`.
        fused: ``"auto"`` (default): the fused path (:func:`~cmkd_lightning.functional.cmkd_fused.cmkd_fused_terms`,
            same values and gradients, a fraction of the operations) on CPU (its NumPy kernel) and CUDA (its torch
            kernel), the general path elsewhere; ``True``: always fused; ``False``: always the general path, the
            reference (e.g. for double backward, which the fused path does not support). Why each kernel is kept:
            ``BENCHMARKS.md``, section F.
        target_perplexity: ``None`` (default: ``T`` divides the z-scored logits) or ``k`` (``1 < k < C``): a
            per-row temperature instead, chosen so that the teacher's target has perplexity ``k``; see
            :func:`~cmkd_lightning.functional.cmkd_loss`. Runs the general path.

    Example:
        >>> CMKDLoss.paper(temperature=4.0).init_args()["pearson_scale"], CMKDLoss().init_args()["pearson_scale"]
        ('paper', 'sqrt_classes')
        >>> CMKDLoss(preset="paper").entropy_source
        'loss'
    """

    name = "cmkd"
    recommended_weight = 1.0
    recommended_ce_weight = 1.0  # the paper's alpha = 1

    def __init__(
        self,
        temperature: float = 4.0,
        beta: float = 4.0,
        gamma: float = 1.0,
        regularization_strength: float | None = None,
        zscore: bool = True,
        spearman: bool = True,
        dynamic_weighting: bool = True,
        temperature_squared: bool = False,
        pearson_scale: CMKDScale | None = None,
        entropy_source: EntropySource | None = None,
        temperature_units: TemperatureUnits | None = None,
        preset: CMKDPreset = "library",
        sync_entropy_threshold: bool = False,
        eps: float = 1e-7,
        rank_backend: Literal["auto", "torch", "torchsort"] = "auto",
        warmup_epochs: int = 0,
        fused: bool | Literal["auto"] = "auto",
        target_perplexity: float | None = None,
    ) -> None:
        super().__init__(warmup_epochs)
        check_positive(temperature, "temperature")
        check_non_negative(beta, "beta")
        check_non_negative(gamma, "gamma")
        check_positive(eps, "eps")
        if regularization_strength is not None:
            check_positive(regularization_strength, "regularization_strength")
        settings = resolve_preset(
            preset, pearson_scale=pearson_scale, entropy_source=entropy_source, temperature_units=temperature_units
        )
        pearson_scale, entropy_source = settings["pearson_scale"], settings["entropy_source"]
        temperature_units = settings["temperature_units"]
        resolve_scale(pearson_scale, 2)  # validates the value; the factor itself depends on C
        check_entropy_source(entropy_source)
        check_temperature_units(temperature_units)
        if target_perplexity is not None and preset == "paper":
            raise InvalidArgumentError(
                f"Expected `target_perplexity` to be None with preset='paper' (Eq. 16 divides by T), but got "
                f"{target_perplexity!r}; use preset='library' to set it."
            )
        check_perplexity(target_perplexity)
        check_perplexity_settings(target_perplexity, entropy_source, temperature_units, num_classes=2**62)
        if rank_backend not in _RANK_BACKENDS:
            raise InvalidArgumentError(
                f"Expected `rank_backend` to be one of {_RANK_BACKENDS}, but got {rank_backend!r}."
            )
        if spearman and not zscore:
            warnings.warn(
                "CMKDLoss(spearman=True, zscore=False): the Spearman term on un-normalised logits rewards "
                "inflating the student's logits; training collapsed to chance in every seed of our pilot. "
                "Keep `zscore=True` unless this is a deliberate ablation.",
                UserWarning,
                stacklevel=2,
            )
        self.temperature, self.beta, self.gamma = temperature, beta, gamma
        self.regularization_strength = regularization_strength
        self.zscore, self.spearman, self.dynamic_weighting = zscore, spearman, dynamic_weighting
        self.temperature_squared = temperature_squared
        self.pearson_scale = pearson_scale
        self.entropy_source = entropy_source
        self.temperature_units = temperature_units
        self.preset = preset
        self.sync_entropy_threshold = sync_entropy_threshold
        self.eps = eps
        self.rank_backend = rank_backend
        if fused not in (True, False, "auto"):
            raise InvalidArgumentError(f"Expected `fused` to be True, False or 'auto', but got {fused!r}.")
        if fused is True and (temperature_units != "zscore" or target_perplexity is not None):
            setting = (
                f"temperature_units={temperature_units!r}"
                if temperature_units != "zscore"
                else f"target_perplexity={target_perplexity!r}"
            )
            raise InvalidArgumentError(
                f"Expected `fused` to be False or 'auto' with {setting} (the fused kernels divide the z-scored "
                "logits by T), but got True."
            )
        self.fused = fused
        self.target_perplexity = target_perplexity

    @classmethod
    def paper(cls, temperature: float = 4.0, **kwargs: object) -> CMKDLoss:
        """Eq. 16 as written: ``CMKDLoss(preset="paper", temperature=temperature, **kwargs)``.

        Args:
            temperature: ``T`` (the paper: 4 on CIFAR-100, 1 on ImageNet).
            **kwargs: any other :class:`CMKDLoss` argument (``beta``, ``gamma``, the ablation switches, ...);
                one that contradicts the paper's Pearson scale or entropy raises ``ValueError``.

        Example:
            >>> loss = CMKDLoss.paper(temperature=1.0)
            >>> loss.preset, loss.temperature, loss.pearson_scale, loss.entropy_source
            ('paper', 1.0, 'paper', 'loss')
        """
        return cls(temperature=temperature, preset="paper", **kwargs)  # type: ignore[arg-type]

    @override
    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None
    ) -> dict[str, Tensor]:
        fused = self.fused is True or (
            self.fused == "auto"
            and self.temperature_units == "zscore"
            and self.target_perplexity is None
            and fused_covers(student_logits)
        )
        general = {} if fused else {"temperature_units": self.temperature_units}
        if not fused and self.target_perplexity is not None:
            general["target_perplexity"] = self.target_perplexity
        stats_fn, terms_fn = (fast_teacher_stats, cmkd_fused_terms) if fused else (teacher_stats, cmkd_terms)
        stats = stats_fn(
            teacher_logits,
            temperature=self.temperature,
            zscore=self.zscore,
            eps=self.eps,
            entropy_source=self.entropy_source,
            **general,
        )
        threshold = self._global_threshold(stats.entropy) if self.sync_entropy_threshold else None
        # Hyper-parameters were validated in __init__ (and the un-normalised-Spearman warning given there): no
        # value-reading check runs here, so the step has no host-device sync outside the soft rank's rounds.
        terms = terms_fn(
            student_logits,
            teacher_logits,
            temperature=self.temperature,
            beta=self.beta,
            gamma=self.gamma,
            regularization_strength=self.regularization_strength,
            zscore=self.zscore,
            spearman=self.spearman,
            dynamic_weighting=self.dynamic_weighting,
            temperature_squared=self.temperature_squared,
            pearson_scale=self.pearson_scale,
            entropy_source=self.entropy_source,
            **general,
            entropy_threshold=threshold,
            teacher=stats,
            eps=self.eps,
            rank_backend=self.rank_backend,
            validate_args=False,
        )
        return {
            "loss": terms.loss.mean(),
            "pearson_loss": terms.pearson.detach().mean(),
            "spearman_loss": terms.spearman.detach().mean(),
            "hard_fraction": terms.hard.float().mean(),
            "teacher_entropy": terms.entropy.mean(),
        }

    @staticmethod
    def _global_threshold(entropy: Tensor) -> Tensor | None:
        """Mean teacher entropy over the global batch (all ranks); ``None`` outside ``torch.distributed``."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        totals = torch.stack((upcast(entropy).sum(), entropy.new_full((), float(entropy.numel())))).float()
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return (totals[0] / totals[1]).to(entropy.dtype)
