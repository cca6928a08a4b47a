"""CMKD: Correlation Matching Knowledge Distillation (Pearson + soft Spearman, entropy-weighted)."""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.functional.correlation import _pearson_corr
from cmkd_lightning.functional.perplexity import check_perplexity, perplexity_scale
from cmkd_lightning.functional.rank import rank
from cmkd_lightning.functional.soft_rank import soft_rank
from cmkd_lightning.functional.zscore import _zscore
from cmkd_lightning.utilities.validation import (
    Reduction,
    check_non_negative,
    check_pair,
    check_positive,
    check_reduction,
    check_result,
    reduce,
    upcast,
)


class TeacherStats(NamedTuple):
    """Teacher-side quantities of CMKD, computed once per step without gradient.

    Attributes:
        probs: ``(N, C)`` teacher probabilities ``softmax(zscore(z_t) / T)``.
        ranks: ``(N, C)`` exact ascending ranks of the teacher logits (ties averaged).
        entropy: ``(N,)`` Eq. 14's entropy in nats: of the teacher's own ``softmax(z_t)`` for
            ``entropy_source="teacher"``, of ``probs`` for ``entropy_source="loss"``.
        scale: ``(N, 1)`` per-row factor of the z-scored logits before the softmax when a ``target_perplexity``
            sets it (``probs = softmax(zscore(z_t) * scale)``); ``None`` otherwise (the factor is ``1 / T``).
    """

    probs: Tensor
    ranks: Tensor
    entropy: Tensor
    scale: Tensor | None = None


CMKDScale = Literal["sqrt_classes", "paper"] | float
EntropySource = Literal["loss", "teacher"]
CMKDPreset = Literal["library", "paper"]
TemperatureUnits = Literal["zscore", "logits"]
_ENTROPY_SOURCES = ("loss", "teacher")
_TEMPERATURE_UNITS = ("zscore", "logits")

#: The settings each preset fixes: where the library's defaults depart from Eq. 16 as the paper writes it.
CMKD_PRESETS: dict[str, dict[str, object]] = {
    "library": {"pearson_scale": "sqrt_classes", "entropy_source": "teacher", "temperature_units": "zscore"},
    "paper": {"pearson_scale": "paper", "entropy_source": "loss", "temperature_units": "zscore"},
}


def resolve_preset(preset: str, **settings: object) -> dict[str, object]:
    """The preset's settings, with the ones given (not ``None``) in ``settings`` in their place.

    ``"library"`` is the library's defaults, which any argument may change. ``"paper"`` is Eq. 16 as written
    (Pearson term unscaled, Eq. 14's entropy of the loss's ``softmax(zscore(z_t) / T)``, ``T`` dividing the
    z-scored logits): an argument that
    contradicts it raises, so a run that says ``preset="paper"`` is the paper's loss. The temperature, weights
    and ablation switches are the paper's own knobs and are not part of a preset.

    Args:
        preset: ``"library"`` or ``"paper"``.
        **settings: ``pearson_scale``, ``entropy_source``, ``temperature_units``; ``None`` for the preset's value.

    Returns:
        ``{"pearson_scale": ..., "entropy_source": ..., "temperature_units": ...}``.

    Example:
        >>> resolve_preset("paper", pearson_scale=None, entropy_source=None)
        {'pearson_scale': 'paper', 'entropy_source': 'loss', 'temperature_units': 'zscore'}
        >>> resolve_preset("library", pearson_scale=2.0)
        {'pearson_scale': 2.0, 'entropy_source': 'teacher', 'temperature_units': 'zscore'}
    """
    if preset not in CMKD_PRESETS:
        raise InvalidArgumentError(f"Expected `preset` to be one of {tuple(CMKD_PRESETS)}, but got {preset!r}.")
    unknown = sorted(set(settings) - set(CMKD_PRESETS[preset]))
    if unknown:
        raise InvalidArgumentError(f"Expected preset settings among {sorted(CMKD_PRESETS[preset])}, but got {unknown}.")
    resolved = dict(CMKD_PRESETS[preset])
    for key, value in settings.items():
        if value is None:
            continue
        if preset == "paper" and value != resolved[key]:
            raise InvalidArgumentError(
                f"Expected `{key}` to be {resolved[key]!r} or None with preset='paper' (Eq. 16 as written), but "
                f"got {value!r}; use preset='library' to change it."
            )
        resolved[key] = value
    return resolved


def check_temperature_units(temperature_units: str) -> None:
    """Raise a ``ValueError`` unless ``temperature_units`` is ``"zscore"`` or ``"logits"``."""
    if temperature_units not in _TEMPERATURE_UNITS:
        raise InvalidArgumentError(
            f"Expected `temperature_units` to be one of {_TEMPERATURE_UNITS}, but got {temperature_units!r}."
        )


def temperature_factor(teacher_logits: Tensor, temperature_units: str, zscore: bool) -> Tensor | float:
    r"""What the z-scored logits are multiplied by before ``/ T``: 1, or the teacher row's std.

    With ``"logits"`` (and ``zscore``) the factor is :math:`\sigma(z^t_i)`, shape ``(N, 1)``, so the teacher's target
    is :math:`\operatorname{softmax}((z^t_i - \mu_i) / T) = \operatorname{softmax}(z^t_i / T)`, the teacher's own
    distribution at ``T`` (what KD and DIST match), and the student's z-scored row is put on the same scale.
    """
    if temperature_units != "logits" or not zscore:
        return 1.0
    with torch.no_grad():
        zt = upcast(teacher_logits.detach())
        return zt.std(dim=-1, keepdim=True).clamp_min(torch.finfo(zt.dtype).tiny)


def check_perplexity_settings(
    target_perplexity: float | None, entropy_source: str, temperature_units: str, num_classes: int
) -> None:
    """Raise unless ``target_perplexity`` is ``None``, or in ``(1, C)`` with the teacher's entropy and z-scores.

    With a target perplexity every teacher target has the same entropy, so Eq. 14 must read the teacher's own
    ``softmax(z_t)`` (``entropy_source="teacher"``), and ``T`` plays no part (``temperature_units="zscore"``).
    """
    if target_perplexity is None:
        return
    check_perplexity(target_perplexity, num_classes)
    if entropy_source != "teacher":
        raise InvalidArgumentError(
            "Expected `entropy_source='teacher'` with a `target_perplexity` (every target then has the same "
            f"entropy, log {target_perplexity}, so it cannot split the batch), but got {entropy_source!r}."
        )
    if temperature_units != "zscore":
        raise InvalidArgumentError(
            "Expected `temperature_units='zscore'` with a `target_perplexity` (the per-row temperature replaces "
            f"T), but got {temperature_units!r}."
        )


def check_entropy_source(entropy_source: str) -> None:
    """Raise a ``ValueError`` unless ``entropy_source`` is ``"loss"`` or ``"teacher"``."""
    if entropy_source not in _ENTROPY_SOURCES:
        raise InvalidArgumentError(
            f"Expected `entropy_source` to be one of {_ENTROPY_SOURCES}, but got {entropy_source!r}."
        )


def check_cmkd_args(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    beta: float,
    gamma: float,
    eps: float,
    regularization_strength: float | None,
    entropy_source: str,
    validate_args: bool,
) -> float:
    """The checks both CMKD paths run; returns the soft-rank strength (``1 / C`` when ``None``).

    Shapes and dtypes are always checked; the scalar arguments only with ``validate_args``.
    """
    check_pair(student_logits, teacher_logits, validate_args)
    if regularization_strength is None:
        regularization_strength = default_regularization_strength(student_logits.shape[-1])
    if validate_args:
        check_positive(temperature, "temperature")
        check_non_negative(beta, "beta")
        check_non_negative(gamma, "gamma")
        check_positive(eps, "eps")
        check_positive(regularization_strength, "regularization_strength")
        check_entropy_source(entropy_source)
    return regularization_strength


def teacher_entropy(teacher_logits: Tensor, probs: Tensor, log_probs: Tensor, entropy_source: str) -> Tensor:
    """Eq. 14's entropy per sample: of the loss's ``probs`` (``"loss"``) or of ``softmax(z_t)`` (``"teacher"``)."""
    if entropy_source == "teacher":
        log_probs = F.log_softmax(upcast(teacher_logits.detach()), dim=-1)
        probs = log_probs.exp()
    return -(probs * log_probs).sum(dim=-1)


_SCALES = ("sqrt_classes", "paper")


def resolve_scale(scale: CMKDScale, num_classes: int) -> float:
    r"""The factor on CMKD's Pearson term: :math:`\sqrt{C}` (``"sqrt_classes"``), 1 (``"paper"``) or a number.

    The Pearson term is ``1 - r`` of two length-``C`` rows; on z-scored rows its gradient has norm
    :math:`\sqrt{1 - r^2} / \sqrt{C - 1}` (divided by the student's logit std), so at factor 1 its pull on the
    student shrinks like :math:`1 / \sqrt{C}` against the cross-entropy's, whose gradient norm does not depend
    on ``C``. ``"sqrt_classes"`` undoes that, so one setting serves 10 to 1000 classes; ``"paper"`` is Eq. 16
    as written.

    Args:
        scale: ``"sqrt_classes"``, ``"paper"`` or a finite number > 0.
        num_classes: ``C``.

    Returns:
        The factor as a Python float.

    Example:
        >>> resolve_scale("sqrt_classes", 100), resolve_scale("paper", 100), resolve_scale(2.5, 100)
        (10.0, 1.0, 2.5)
    """
    if isinstance(scale, str):
        if scale == "sqrt_classes":
            return math.sqrt(num_classes)
        if scale == "paper":
            return 1.0
        raise InvalidArgumentError(
            f"Expected `pearson_scale` to be one of {_SCALES} or a number > 0, but got {scale!r}."
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise InvalidArgumentError(
            f"Expected `pearson_scale` to be one of {_SCALES} or a finite number > 0, but got {scale!r}."
        )
    return float(scale)


class CMKDTerms(NamedTuple):
    """Per-sample pieces of the CMKD loss (see :func:`cmkd_terms`).

    Attributes:
        loss: ``(N,)`` weighted per-sample loss (Eq. 16 without the cross-entropy, its Pearson term times
            ``pearson_scale``, all times the optional ``T^2``), differentiable.
        pearson: ``(N,)`` ``1 - r(p_s, p_t)`` (Eq. 12), differentiable.
        spearman: ``(N,)`` ``1 - r(softrank(z_s), rank(z_t))`` (Eq. 13), differentiable; zeros when disabled.
        hard: ``(N,)`` bool, teacher entropy ``>=`` threshold (flat teacher, "hard" sample).
        entropy: ``(N,)`` teacher entropy.
    """

    loss: Tensor
    pearson: Tensor
    spearman: Tensor
    hard: Tensor
    entropy: Tensor


def default_regularization_strength(num_classes: int) -> float:
    r"""Default soft-rank strength for CMKD on z-scored logits: :math:`\varepsilon = 1 / C`.

    On z-scored logits neighbouring sorted values are about ``1 / C`` apart, so ``1 / C`` keeps the soft rank a rank
    (a fixed ``eps`` such as 0.1 or 1.0 pools whole rows into an affine map for every ``C >= 100``); the
    measurements are in ``docs/DESIGN.md``, "Soft-rank strength".

    Args:
        num_classes: the number of classes ``C``.

    Returns:
        ``1 / C``.

    Example:
        >>> default_regularization_strength(100)
        0.01
    """
    return 1.0 / num_classes


def teacher_stats(
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    zscore: bool = True,
    eps: float = 1e-7,
    entropy_source: EntropySource = "teacher",
    temperature_units: TemperatureUnits = "zscore",
    target_perplexity: float | None = None,
) -> TeacherStats:
    """Teacher probabilities, exact ranks and entropy for :func:`cmkd_terms`, without gradient.

    ``entropy_source`` picks the distribution of Eq. 14's entropy, ``temperature_units`` the scale ``T``
    divides and ``target_perplexity`` a per-row temperature instead (:func:`cmkd_loss` documents all three).
    """
    with torch.no_grad():
        zt = upcast(teacher_logits.detach())
        zt = _zscore(zt, eps) if zscore else zt
        if target_perplexity is not None:
            scale = perplexity_scale(zt, target_perplexity)
            log_pt = F.log_softmax(zt * scale, dim=-1)
        else:
            scale = None
            factor = temperature_factor(teacher_logits, temperature_units, zscore)
            log_pt = F.log_softmax(zt * factor / temperature, dim=-1)
        probs = log_pt.exp()
        entropy = teacher_entropy(teacher_logits, probs, log_pt, entropy_source)
        return TeacherStats(probs=probs, ranks=rank(zt), entropy=entropy, scale=scale)


def cmkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    beta: float = 4.0,
    gamma: float = 1.0,
    regularization_strength: float | None = None,
    zscore: bool = True,
    spearman: bool = True,
    dynamic_weighting: bool = True,
    temperature_squared: bool = False,
    pearson_scale: CMKDScale = "sqrt_classes",
    entropy_source: EntropySource = "teacher",
    temperature_units: TemperatureUnits = "zscore",
    target_perplexity: float | None = None,
    entropy_threshold: Tensor | float | None = None,
    teacher: TeacherStats | None = None,
    eps: float = 1e-7,
    rank_backend: Literal["auto", "torch", "torchsort"] = "auto",
    validate_args: bool = True,
) -> CMKDTerms:
    """Per-sample CMKD terms; :func:`cmkd_loss` documents every argument.

    Like every ``*_terms`` function (``docs/DESIGN.md``, "The ``*_terms`` functions"), ``pearson`` and
    ``spearman`` are ``(N,)`` and unweighted (before ``beta``/``gamma``, the Pearson scale and ``T^2``);
    ``loss`` is the finished per-sample loss with all of them applied.

    Extra arguments:
        entropy_threshold: overrides the batch-mean entropy threshold (e.g. a mean all-reduced over devices).
        teacher: precomputed :func:`teacher_stats` with the same ``temperature``/``zscore``/``eps`` (saves work
            when several consumers share one teacher forward).
    """
    regularization_strength = check_cmkd_args(
        student_logits,
        teacher_logits,
        temperature,
        beta,
        gamma,
        eps,
        regularization_strength,
        entropy_source,
        validate_args,
    )
    num_classes = student_logits.shape[-1]
    factor = resolve_scale(pearson_scale, num_classes)
    if validate_args and spearman and not zscore:
        warnings.warn(
            "CMKD's Spearman term is used on un-normalised logits (`zscore=False`): the soft rank then rewards "
            "inflating the student's logits, which made training collapse in our pilots, and "
            "`regularization_strength` is no longer in unit-variance units. Use `zscore=True` unless this is "
            "a deliberate ablation.",
            UserWarning,
            stacklevel=3,
        )
    if validate_args:
        check_temperature_units(temperature_units)
        check_perplexity_settings(target_perplexity, entropy_source, temperature_units, num_classes)
    if teacher is None:
        teacher = teacher_stats(
            teacher_logits,
            temperature=temperature,
            zscore=zscore,
            eps=eps,
            entropy_source=entropy_source,
            temperature_units=temperature_units,
            target_perplexity=target_perplexity,
        )

    zs = upcast(student_logits)
    zs = _zscore(zs, eps) if zscore else zs
    if target_perplexity is not None:
        scale = teacher.scale
        if scale is None:  # precomputed stats without it: the same per-row scale, from the teacher's own row
            zt = upcast(teacher_logits.detach())
            scale = perplexity_scale(_zscore(zt, eps) if zscore else zt, target_perplexity)
        ps = F.softmax(zs * scale.to(zs.dtype), dim=-1)
    else:
        factor_t = temperature_factor(teacher_logits, temperature_units, zscore)
        ps = F.softmax((zs * factor_t if temperature_units == "logits" else zs) / temperature, dim=-1)
    pearson = 1.0 - _pearson_corr(ps, teacher.probs.to(ps.dtype))
    scaled_pearson = pearson * factor if factor != 1.0 else pearson
    if spearman:
        # the only host-device syncs of CMKD: the pooling rounds of the torch backend (docs/DEVICE.md)
        soft = soft_rank(zs, regularization_strength, backend=rank_backend, validate_args=False)
        spearman_loss = 1.0 - _pearson_corr(soft, teacher.ranks.to(soft.dtype))
    else:
        spearman_loss = torch.zeros_like(pearson)

    threshold = teacher.entropy.mean() if entropy_threshold is None else entropy_threshold
    hard = teacher.entropy >= threshold
    if not spearman:
        per_sample = beta * scaled_pearson
    elif dynamic_weighting:
        # Eq. 16: flat teacher (H_i >= mean H) -> beta * Pearson + gamma * Spearman; sharp -> the swap.
        # 0-dim fills in the loss's dtype: torch.where with two Python floats would round them to float32
        big, small = pearson.new_full((), beta), pearson.new_full((), gamma)
        w_pearson = torch.where(hard, big, small)
        w_spearman = torch.where(hard, small, big)
        per_sample = w_pearson * scaled_pearson + w_spearman * spearman_loss
    else:
        per_sample = beta * scaled_pearson + gamma * spearman_loss
    if temperature_squared:
        per_sample = per_sample * temperature**2
    return CMKDTerms(per_sample, pearson, spearman_loss, hard, teacher.entropy)


def cmkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    beta: float = 4.0,
    gamma: float = 1.0,
    regularization_strength: float | None = None,
    zscore: bool = True,
    spearman: bool = True,
    dynamic_weighting: bool = True,
    temperature_squared: bool = False,
    pearson_scale: CMKDScale = "sqrt_classes",
    entropy_source: EntropySource = "teacher",
    temperature_units: TemperatureUnits = "zscore",
    target_perplexity: float | None = None,
    eps: float = 1e-7,
    rank_backend: Literal["auto", "torch", "torchsort"] = "auto",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Correlation Matching Knowledge Distillation loss (the distillation part of Eq. 16).

    For every sample ``i``, with :math:`\hat z = \operatorname{zscore}(z)` (Eq. 9–11) and
    :math:`p = \operatorname{softmax}(\hat z / T)`:

    .. math::
        L_{P,i} = 1 - r(p^s_i, p^t_i) \quad\text{(Eq. 12)},\qquad
        L_{S,i} = 1 - r\big(\operatorname{softrank}_\varepsilon(\hat z^s_i), \operatorname{rank}(z^t_i)\big)
        \quad\text{(Eq. 13)}

    .. math::
        H_i = -\sum_c q_{i,c}\log q_{i,c},\ q_i = \operatorname{softmax}(z^t_i)\ \text{(Eq. 14)},\qquad
        \bar H = \frac1N \sum_i H_i\ \text{(Eq. 15)}

    .. math::
        \ell_i = \begin{cases} \beta\,s\,L_{P,i} + \gamma L_{S,i} & H_i \ge \bar H \text{ (flat teacher, hard)}\\
        \gamma\,s\,L_{P,i} + \beta L_{S,i} & H_i < \bar H \text{ (sharp teacher, easy)}\end{cases}\quad\text{(Eq. 16)}

    ``r`` is the Pearson correlation across the ``C`` classes, ``softrank`` the l2 soft rank of Blondel et al.
    2020 (:func:`soft_rank`) and the teacher's rank is exact. The cross-entropy term ``alpha * L_CE`` of Eq. 16
    belongs to the training module. ``"mean"`` averages ``ell_i`` over the batch.

    Rationale (``docs/DESIGN.md``, "CMKD, the loss"): ``s = sqrt(C)`` by default (``"paper"``: ``s = 1``) keeps the
    Pearson term's pull independent of ``C``; the entropy is the teacher's own (``q``; ``entropy_source="loss"``
    takes ``p^t``, which the paper's notation also allows) because ``p^t`` is nearly uniform; hard samples
    (``H_i >= mean H``) get ``beta`` on Pearson as Eq. 16 and Sec. IV-B say (the prose of Sec. V-C says the
    opposite); ``eps = 1 / C`` keeps the soft rank a rank; a batch of one sample takes the hard branch.

    Switches reproduce the ablation rows of Table VI: ``zscore`` (Eq. 9–11), ``spearman`` (with
    ``spearman=False`` every sample's loss is ``beta * s * L_P``), ``dynamic_weighting`` (off: the fixed
    ``beta * s * L_P + gamma * L_S``). The paper states no ``T^2`` factor; ``temperature_squared=True`` adds one
    (as DIST and LS-KD do) on top of ``s``, off by default.

    Paper: "Efficient and Robust Knowledge Distillation from A Stronger Teacher Based on Correlation Matching",
    Sec. V, Eq. 9–16. Recipe: ``T = 4`` (CIFAR-100) or ``T = 1`` (ImageNet), ``alpha = 1, beta = 4, gamma = 1``.

    Args:
        student_logits: ``(N, C)`` student logits, ``C >= 2``.
        teacher_logits: ``(N, C)`` teacher logits (no gradient flows to them).
        temperature: softmax temperature ``T > 0`` of the Pearson term and the entropy.
        beta: the larger weight of Eq. 16.
        gamma: the smaller weight of Eq. 16.
        regularization_strength: soft-rank ``eps``; ``None`` means ``1 / C``.
        zscore: z-score both logits first (Eq. 9–11). Turning it off with ``spearman=True`` warns.
        spearman: include the Spearman term.
        dynamic_weighting: entropy-based swap of ``beta``/``gamma`` (Eq. 14–16).
        temperature_squared: multiply the loss by ``T^2``.
        pearson_scale: ``s``: ``"sqrt_classes"`` (``sqrt(C)``, default), ``"paper"`` (1) or a number > 0. Eq. 16
            as written is ``pearson_scale="paper", entropy_source="loss"`` (``CMKDLoss(preset="paper")``).
        entropy_source: the distribution whose entropy splits the batch (Eq. 14), which the paper leaves open:
            ``"teacher"`` (default) the teacher's own prediction, ``softmax(z_t)``; ``"loss"`` the probabilities
            the Pearson term uses, ``softmax(zscore(z_t) / T)``, whose entropies sit within a fraction of a
            percent of ``log C`` at ``T = 4`` and split a batch almost at random (``docs/DESIGN.md``).
        temperature_units: what ``T`` divides in the Pearson term: ``"zscore"`` (default, Eq. 12 as written) the
            z-scored logits, so ``p = softmax(zscore(z) / T)``; ``"logits"`` the teacher's own logit scale: both
            z-scored rows are multiplied by the teacher row's std first, so the teacher's target is
            ``softmax(z_t / T)`` and the student's ``softmax(zscore(z_s) * std(z_t) / T)``. Not in the paper
            (``docs/TEACHER_ZOO.md``); the ranks and Eq. 16's weighting are unchanged.
        target_perplexity: ``None`` (default) or ``k`` with ``1 < k < C``: a per-row temperature replaces ``T``
            in the Pearson term, :math:`p_i = \operatorname{softmax}(b_i \hat z_i)` with :math:`b_i` chosen so
            that the teacher's target has perplexity :math:`\exp H(p^t_i) = k`
            (:func:`~cmkd_lightning.functional.perplexity.perplexity_scale`); the student's row uses the same
            :math:`b_i`. Needs ``entropy_source="teacher"`` and ``temperature_units="zscore"``. Not in the paper
            (``docs/TEACHER_ZOO.md``).
        eps: added to the standard deviation of the z-score.
        rank_backend: soft-rank backend, ``"auto"``, ``"torch"`` or ``"torchsort"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample ``(N,)``).
        validate_args: check the values (finite logits and result; host-device syncs) and the scalar arguments.
            Shape and dtype checks always run. Training modules pass ``False`` after validating once.

    Returns:
        Scalar, or ``(N,)`` for ``reduction="none"``; float32 for half-precision inputs.

    Raises:
        ValueError: with ``validate_args``, for NaN/Inf logits, bad scalar arguments or a non-finite result.

    Example:
        >>> z = torch.tensor([[0.5, 2.0, -1.0, 0.0], [3.0, 0.1, 0.2, 0.3]])
        >>> round(float(cmkd_loss(z, z, regularization_strength=1e-3)), 4)  # same logits, near-hard ranks
        0.0
        >>> round(float(cmkd_loss(z, -z, pearson_scale="paper")), 4)  # reversed ranking, Eq. 16 as written
        9.9387
        >>> round(float(cmkd_loss(z, -z)), 4)  # default: the Pearson term times sqrt(C) = 2
        14.9285
    """
    check_reduction(reduction)
    terms = cmkd_terms(
        student_logits,
        teacher_logits,
        temperature=temperature,
        beta=beta,
        gamma=gamma,
        regularization_strength=regularization_strength,
        zscore=zscore,
        spearman=spearman,
        dynamic_weighting=dynamic_weighting,
        temperature_squared=temperature_squared,
        pearson_scale=pearson_scale,
        entropy_source=entropy_source,
        temperature_units=temperature_units,
        target_perplexity=target_perplexity,
        eps=eps,
        rank_backend=rank_backend,
        validate_args=validate_args,
    )
    loss = reduce(terms.loss, reduction)
    return check_result(loss, "cmkd_loss", student_logits, teacher_logits) if validate_args else loss


__all__ = [
    "CMKD_PRESETS",
    "CMKDPreset",
    "CMKDScale",
    "CMKDTerms",
    "EntropySource",
    "TemperatureUnits",
    "TeacherStats",
    "check_cmkd_args",
    "check_entropy_source",
    "check_perplexity_settings",
    "check_temperature_units",
    "cmkd_loss",
    "cmkd_terms",
    "default_regularization_strength",
    "resolve_preset",
    "resolve_scale",
    "teacher_entropy",
    "teacher_stats",
    "temperature_factor",
]
