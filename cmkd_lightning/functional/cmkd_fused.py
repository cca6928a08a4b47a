"""Fused CMKD: the same loss as :func:`~cmkd_lightning.functional.cmkd.cmkd_terms` at a fraction of its op count.

The teacher side (z-score, probabilities, exact ranks, entropy) is computed once without autograd
(:func:`fast_teacher_stats`). The student side (z-score, softmax, Pearson, soft rank, Pearson, Eq. 16 weights) is
one :class:`torch.autograd.Function` with a hand-written backward. Two kernels compute the same thing: on CPU the
NumPy one (``_cmkd_numpy.py``: NumPy's sort and its own pool-adjacent-violators solver for large batches), on
other devices (CUDA) the torch one in this file. Design: ``docs/DESIGN.md`` ("The fused path"); measurements:
``BENCHMARKS.md`` (A: the loss alone; F: whole training steps, why each kernel is kept); host reads:
``docs/DEVICE.md``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from cmkd_lightning.functional import _cmkd_numpy as _np
from cmkd_lightning.functional.cmkd import (
    CMKDScale,
    CMKDTerms,
    EntropySource,
    TeacherStats,
    check_cmkd_args,
    resolve_scale,
    teacher_entropy,
)
from cmkd_lightning.functional.rank import rank
from cmkd_lightning.functional.soft_rank import _import_torchsort, _isotonic_block_starts, _torchsort_supports
from cmkd_lightning.utilities.validation import upcast

FUSED_DEVICES = ("cpu", "cuda")
_NP_QUIET = functools.partial(np.errstate, all="ignore")  # as torch: overflow gives inf / NaN silently
NUMPY_DEVICES = ("cpu",)  # devices whose fused path runs the NumPy kernel (``_cmkd_numpy.py``); others: torch
_MIN_STD = 1e-15  # as the general z-score, which clamps the variance at 1e-30 before the square root
_PEARSON_EPS = 1e-8  # as the general Pearson correlation: added to the product of the norms


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type`` (it would run ``vecdot`` in half precision); a no-op elsewhere."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _without_autocast(fn: Any) -> Any:
    """Run ``fn(ctx, grad, ...)`` with autocast off on the gradient's device (a backward called inside autocast)."""

    @functools.wraps(fn)
    def wrapper(ctx: Any, grad: Tensor, *rest: Any) -> Any:
        with _autocast_off(grad.device.type):
            return fn(ctx, grad, *rest)

    return wrapper


class FusedTeacher(NamedTuple):
    """Teacher statistics in the form the fused student function uses (all ``(N, C)`` or ``(N,)``, no grad).

    Attributes:
        stats: the :class:`~cmkd_lightning.functional.cmkd.TeacherStats` (probabilities, exact ranks, entropy).
        probs_centred: ``probs - mean(probs)`` per row.
        probs_norm: ``(N,)`` l2 norm of ``probs_centred``.
        ranks_centred: ``ranks - mean(ranks)`` per row.
        ranks_norm: ``(N,)`` l2 norm of ``ranks_centred``.
    """

    stats: TeacherStats
    probs_centred: Tensor
    probs_norm: Tensor
    ranks_centred: Tensor
    ranks_norm: Tensor


# ------------------------------------------------------------------------------------------------------------
# teacher side


def fast_teacher_stats(
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    zscore: bool = True,
    eps: float = 1e-7,
    entropy_source: EntropySource = "teacher",
) -> TeacherStats:
    r"""Teacher probabilities, exact ranks and entropy: :func:`~cmkd_lightning.functional.teacher_stats`, faster.

    .. math::
        \hat z = \operatorname{zscore}(z),\quad p = \operatorname{softmax}(\hat z / T),\quad
        H = -\sum_c q_c \log q_c,\quad \operatorname{rank}(\hat z)\ \text{(ascending, ties averaged)}

    with :math:`q = \operatorname{softmax}(z)` for ``entropy_source="teacher"`` (the library preset) and
    :math:`q = p` for ``"loss"`` (the paper preset). The same values as
    :func:`~cmkd_lightning.functional.teacher_stats` (to rounding), in fewer operations and without autograd: on
    CPU by the NumPy kernel (:func:`numpy.argsort` sorts several times faster than ``torch.sort``,
    ``BENCHMARKS.md``), elsewhere with torch ops and ``torch.sort``; nothing is read back from an accelerator. The
    result can be passed as ``teacher=`` to :func:`~cmkd_lightning.functional.cmkd_terms` or to
    :func:`cmkd_fused_terms`.

    Args:
        teacher_logits: ``(N, C)`` teacher logits.
        temperature: softmax temperature ``T > 0``.
        zscore: z-score the logits first (CMKD Eq. 9–11).
        eps: added to the standard deviation of the z-score.
        entropy_source: ``"loss"`` (entropy of ``p``) or ``"teacher"`` (of ``softmax(z_t)``), as
            :func:`~cmkd_lightning.functional.cmkd_loss`.

    Returns:
        :class:`~cmkd_lightning.functional.cmkd.TeacherStats` in float32 (half inputs) or the input dtype.

    Example:
        >>> stats = fast_teacher_stats(torch.tensor([[1.0, 3.0, 2.0, 2.0]]))
        >>> stats.ranks
        tensor([[1.0000, 4.0000, 2.5000, 2.5000]])
    """
    if teacher_logits.device.type in NUMPY_DEVICES:
        zt = upcast(teacher_logits.detach())
        with _NP_QUIET():
            t = _np.teacher_stats(zt.numpy(), temperature, zscore, eps, entropy_source)
        return TeacherStats(*(torch.from_numpy(v) for v in t))
    with torch.no_grad(), _autocast_off(teacher_logits.device.type):
        zt = upcast(teacher_logits.detach())
        if zscore:
            zt = _zscore_parts(zt, eps)[3]
        log_p = torch.log_softmax(zt / temperature, dim=1)
        probs = log_p.exp()
        if entropy_source == "loss":
            entropy = torch.linalg.vecdot(probs, log_p).neg_()
        else:
            entropy = teacher_entropy(teacher_logits, probs, log_p, entropy_source)
        ranks = rank(zt)
    return TeacherStats(probs=probs, ranks=ranks, entropy=entropy)


def _zscore_parts(z: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scale-safe z-score (as :func:`~cmkd_lightning.functional.zscore`) and its pieces, without autograd.

    Returns ``scale`` (``max(max |z|, 1)``), ``std`` of ``z / scale`` (not yet clamped), ``d = max(std, 1e-15)
    + eps / scale`` and the z-scored rows ``(z / scale - mean) / d``.
    """
    scale = z.abs().amax(1, keepdim=True).clamp_min_(1.0)
    c = z / scale
    c -= c.mean(1, keepdim=True)
    std = torch.linalg.vector_norm(c, dim=1, keepdim=True).mul_(1.0 / math.sqrt(z.shape[1] - 1))
    d = std.clamp_min(_MIN_STD).add_(eps / scale)
    return scale, std, d, c.div_(d)


def fused_teacher(stats: TeacherStats, spearman: bool = True) -> FusedTeacher:
    """Centre the teacher's probabilities and ranks and take their norms (once per step, no grad)."""
    with torch.no_grad():
        c = stats.probs.shape[1]
        pc = stats.probs - 1.0 / c  # closed-form row means: probabilities sum to 1, ranks to C (C + 1) / 2
        pn = torch.linalg.vector_norm(pc, dim=1)
        if spearman:
            rc = stats.ranks - (c + 1) / 2
            rn = torch.linalg.vector_norm(rc, dim=1)
        else:
            rc, rn = pc, pn  # unused
    return FusedTeacher(stats, pc, pn, rc, rn)


# ------------------------------------------------------------------------------------------------------------
# soft rank pieces: forward gives the ranks, backward applies (I - B) (block averaging), in input order


class _Blocks:
    """Soft ranks of ``theta`` (already divided by eps) and the projection ``g - blockmean(g)`` for the backward.

    ``solver``: ``"torchsort"`` (torchsort's isotonic kernel; the backward reuses its block partition exactly as
    torchsort's own backward does) or ``"torch"`` (the block search of the pure-PyTorch backend, whose pooling
    rounds read the device, ``docs/DEVICE.md``). On CPU the sorting permutation comes from :func:`numpy.argsort`.
    """

    def __init__(self, theta: Tensor, solver: str) -> None:
        n_rows, n = theta.shape
        self.solver = solver
        if theta.device.type == "cpu":
            perm = torch.from_numpy(np.argsort(np.negative(theta.numpy()), axis=1))  # descending; ties: any order
            s = theta.gather(1, perm)
        else:
            s, perm = torch.sort(theta, dim=1, descending=True)
        y = s - torch.arange(n, 0, -1, dtype=theta.dtype, device=theta.device)
        self.perm = perm
        if solver == "torchsort":
            ts = _np.torchsort_ops()
            v = ts.isotonic_l2[theta.device.type](y)
            self.s, self.v = s, v
            self.ranks = torch.empty_like(theta).scatter_(1, perm, s - v)
            return
        starts, _ = _isotonic_block_starts(y)
        if starts is None:  # every row is one block: r = theta - mean(theta) + (n + 1) / 2
            self.block = None
            self.ranks = theta - (theta.mean(1, keepdim=True) - (n + 1) / 2)
            return
        # block ids, unique over the batch because every row starts a block; then sizes and means of y
        block = starts.reshape(-1).cumsum(0).sub_(1)
        sizes = torch.zeros(y.numel(), dtype=y.dtype, device=y.device)
        sizes.index_add_(0, block, torch.ones(1, dtype=y.dtype, device=y.device).expand(y.numel()))
        means = torch.zeros_like(sizes).index_add_(0, block, y.reshape(-1)).div_(sizes)
        self.block = torch.empty_like(perm).scatter_(1, perm, block.view(n_rows, n)).view(-1)
        self.sizes = sizes
        self.ranks = theta - means.index_select(0, self.block).view(n_rows, n)

    def project(self, g: Tensor) -> Tensor:
        """``g - blockmean(g)`` in input order: the soft rank's Jacobian times eps, applied to ``g``."""
        if self.solver == "torchsort":
            gs = g.gather(1, self.perm)
            bm = _np.torchsort_ops().isotonic_l2_backward[g.device.type](self.s, self.v, gs)
            return torch.empty_like(g).scatter_(1, self.perm, gs.sub_(bm))
        if self.block is None:
            return g - g.mean(1, keepdim=True)
        block_mean = torch.zeros_like(self.sizes).index_add_(0, self.block, g.reshape(-1)).div_(self.sizes)
        return g - block_mean.index_select(0, self.block).view(g.shape)


# ------------------------------------------------------------------------------------------------------------
# student side


class _CMKDStudent(torch.autograd.Function):
    """Per-sample CMKD loss of the student logits, forward and analytic backward (see :func:`cmkd_fused_terms`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, zs: Tensor, teacher: FusedTeacher, args: _np.StudentArgs
    ) -> tuple[Tensor, Tensor, Tensor]:
        w_pearson, w_spearman, temperature, zscore, eps, rank_strength, solver = args
        n_rows, c = zs.shape
        if zscore:
            scale, std, d, h = _zscore_parts(zs, eps)
            live = std > _MIN_STD  # where the variance is clamped, the standard deviation has no gradient
            ctx.zs_data = (scale, std.clamp_min_(_MIN_STD), d, live)
        else:
            h = zs
        # Pearson of the probabilities (Eq. 12)
        p = torch.softmax(h / temperature, dim=1)
        pc = p - p.mean(1, keepdim=True)  # not 1 / C: a constant row's rounding must match the general path's
        num_p = torch.linalg.vecdot(pc, teacher.probs_centred)
        norm_p = torch.linalg.vector_norm(pc, dim=1)
        den_p = norm_p * teacher.probs_norm + _PEARSON_EPS
        r_p = num_p / den_p
        loss = (1.0 - r_p) * w_pearson
        ctx.pearson_data = (p, pc, norm_p, den_p, r_p)
        if rank_strength is not None:
            # soft-rank Pearson against the teacher's exact ranks (Eq. 13)
            blocks = _Blocks(h * (1.0 / rank_strength), solver)
            rs = blocks.ranks
            rc = rs - rs.mean(1, keepdim=True)  # not (C + 1) / 2: a tied row must give exactly 0, as in general
            num_s = torch.linalg.vecdot(rc, teacher.ranks_centred)
            norm_s = torch.linalg.vector_norm(rc, dim=1)
            den_s = norm_s * teacher.ranks_norm + _PEARSON_EPS
            r_s = num_s / den_s
            loss = loss + (1.0 - r_s) * w_spearman
            ctx.spearman_data = (blocks, rc, norm_s, den_s, r_s)
            spearman = 1.0 - r_s
        else:
            ctx.spearman_data = None
            spearman = torch.zeros_like(r_p)
        ctx.h, ctx.teacher = h, teacher
        ctx.w_pearson, ctx.w_spearman = w_pearson, w_spearman
        ctx.temperature, ctx.zscore, ctx.rank_strength, ctx.c = temperature, zscore, rank_strength, c
        pearson = 1.0 - r_p
        ctx.mark_non_differentiable(pearson, spearman)
        return loss, pearson, spearman

    @staticmethod
    @once_differentiable
    @_without_autocast
    def backward(ctx: Any, grad: Tensor, _p: Tensor | None, _s: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        teacher: FusedTeacher = ctx.teacher
        # d r / d x = (y_c - r |y_c| x_c / |x_c|) / den; the centring projection is dropped: the softmax and
        # soft-rank backwards below remove any per-row (per-block) constant
        p, pc, norm_p, den_p, r_p = ctx.pearson_data
        g_r = (grad * ctx.w_pearson).neg_().div_(den_p)
        coef = (r_p * teacher.probs_norm).div_(norm_p.clamp_min(torch.finfo(p.dtype).tiny))
        gp = teacher.probs_centred - coef.unsqueeze(1) * pc
        gp.mul_(g_r.unsqueeze(1))
        gh = gp.sub_(torch.linalg.vecdot(p, gp).unsqueeze(1)).mul_(p).div_(ctx.temperature)
        if ctx.spearman_data is not None:
            blocks, rc, norm_s, den_s, r_s = ctx.spearman_data
            g_r = (grad * ctx.w_spearman).neg_().div_(den_s)
            coef = (r_s * teacher.ranks_norm).div_(norm_s.clamp_min(torch.finfo(rc.dtype).tiny))
            gs = teacher.ranks_centred - coef.unsqueeze(1) * rc
            gs.mul_(g_r.unsqueeze(1))
            gh.add_(blocks.project(gs), alpha=1.0 / ctx.rank_strength)
        if not ctx.zscore:
            return gh, None, None
        # z-score: h = c / (std + eps'), std = sqrt(sum c^2 / (C - 1)) (no gradient where the variance is clamped)
        scale, std, d, live = ctx.zs_data
        h = ctx.h
        k = torch.linalg.vecdot(gh, h).unsqueeze(1).mul_(live).div_(std * (ctx.c - 1))
        gz = gh.div_(d).sub_(h * k)
        gz.sub_(gz.mean(1, keepdim=True)).div_(scale)
        return gz, None, None


class _CMKDStudentNumpy(torch.autograd.Function):
    """:class:`_CMKDStudent` on CPU: the same forward and backward, computed by the NumPy kernel."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, zs: Tensor, teacher: _np.Centred, args: _np.StudentArgs
    ) -> tuple[Tensor, Tensor, Tensor]:
        with _NP_QUIET():
            loss, pearson, spearman, saved = _np.student_forward(zs.detach().numpy(), teacher, args)
        ctx.saved, ctx.teacher, ctx.args = saved, teacher, args
        pearson_t, spearman_t = torch.from_numpy(pearson), torch.from_numpy(spearman)
        ctx.mark_non_differentiable(pearson_t, spearman_t)
        return torch.from_numpy(loss), pearson_t, spearman_t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, _p: Tensor | None, _s: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        with _NP_QUIET():
            g = _np.student_backward(grad.numpy(), ctx.saved, ctx.teacher, ctx.args)
        return torch.from_numpy(g), None, None


# ------------------------------------------------------------------------------------------------------------
# entry points


def fused_covers(student_logits: Tensor) -> bool:
    """Whether ``fused="auto"`` takes the fused path for these logits (CPU and CUDA tensors)."""
    return student_logits.device.type in FUSED_DEVICES


def resolve_solver(rank_backend: str, values: Tensor) -> str:
    """The isotonic solver of the fused path: torchsort's kernel where the general path would use it."""
    if rank_backend == "torchsort":
        _import_torchsort(required=True)  # the general path's error when it is missing, not a bare ImportError
        return "torchsort"
    if rank_backend == "auto" and _torchsort_supports(values):
        return "torchsort"
    return "torch"


def cmkd_fused_terms(
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
    entropy_threshold: Tensor | float | None = None,
    teacher: TeacherStats | None = None,
    eps: float = 1e-7,
    rank_backend: Literal["auto", "torch", "torchsort"] = "auto",
    validate_args: bool = True,
) -> CMKDTerms:
    r"""Per-sample CMKD terms through the fused path: :func:`~cmkd_lightning.functional.cmkd_terms`, fewer ops.

    The values and gradients of the general path, at a fraction of the operations. Same formula (Eq. 9–16,
    :func:`~cmkd_lightning.functional.cmkd_loss` documents it and every argument):

    .. math::
        \ell_i = T^{2\,[\text{temperature\_squared}]}\big(w^P_i\, s\,(1 - r(p^s_i, p^t_i))
        + w^S_i\,(1 - r(\operatorname{softrank}_\varepsilon(\hat z^s_i), \operatorname{rank}(z^t_i)))\big)

    Only ``loss`` carries a gradient: the student side is one autograd function with a hand-written backward
    (once differentiable: no double backward). ``pearson`` and ``spearman`` are returned detached.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits (no gradient).
        teacher: precomputed :func:`fast_teacher_stats` (or :func:`~cmkd_lightning.functional.teacher_stats`)
            with the same ``temperature``/``zscore``/``eps``.
        entropy_threshold: overrides the batch-mean entropy threshold (e.g. a mean all-reduced over devices).
        temperature, beta, gamma, regularization_strength, zscore, spearman, dynamic_weighting,
        temperature_squared, pearson_scale, eps, rank_backend, validate_args: as in
            :func:`~cmkd_lightning.functional.cmkd_loss` (with ``validate_args``: finite logits and the scalar
            arguments; shape checks always run).

    Returns:
        :class:`~cmkd_lightning.functional.cmkd.CMKDTerms` (``loss`` differentiable, the rest detached).

    Example:
        >>> from cmkd_lightning.functional import cmkd_terms
        >>> zs = torch.randn(8, 10, dtype=torch.float64)
        >>> zt = torch.randn(8, 10, dtype=torch.float64)
        >>> fused = cmkd_fused_terms(zs, zt).loss
        >>> torch.allclose(fused, cmkd_terms(zs, zt).loss, rtol=1e-10, atol=1e-12)
        True
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
    with _autocast_off(student_logits.device.type):
        return _fused_terms(
            student_logits,
            teacher_logits,
            temperature,
            beta,
            gamma,
            regularization_strength,
            zscore,
            spearman,
            dynamic_weighting,
            temperature_squared,
            pearson_scale,
            entropy_source,
            entropy_threshold,
            teacher,
            eps,
            rank_backend,
        )


def _fused_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    beta: float,
    gamma: float,
    regularization_strength: float,
    zscore: bool,
    spearman: bool,
    dynamic_weighting: bool,
    temperature_squared: bool,
    pearson_scale: Any,
    entropy_source: str,
    entropy_threshold: Tensor | float | None,
    teacher: TeacherStats | None,
    eps: float,
    rank_backend: str,
) -> CMKDTerms:
    num_classes = student_logits.shape[-1]
    factor = resolve_scale(pearson_scale, num_classes)
    if teacher is None:
        teacher = fast_teacher_stats(
            teacher_logits, temperature=temperature, zscore=zscore, eps=eps, entropy_source=entropy_source
        )
    zs = upcast(student_logits)
    teacher = _as_dtype(teacher, zs.dtype)
    t2 = temperature**2 if temperature_squared else 1.0
    solver = resolve_solver(rank_backend, zs) if spearman else "none"
    strength = regularization_strength if spearman else None
    if zs.device.type in NUMPY_DEVICES:
        probs, ranks, entropy = (t.detach() for t in (teacher.probs, teacher.ranks, teacher.entropy))
        centred = _np.centre(probs.numpy(), ranks.numpy() if spearman else None)
        ent = entropy.numpy()
        if entropy_threshold is None:
            threshold = ent.mean()
        else:  # compared in the entropy's dtype, as torch compares a tensor with a scalar
            value = entropy_threshold.detach().cpu() if isinstance(entropy_threshold, Tensor) else entropy_threshold
            threshold = np.asarray(value, dtype=ent.dtype)
        hard = ent >= threshold
        w_pearson, w_spearman = _weights(hard, ent.dtype, spearman and dynamic_weighting, beta, gamma, factor, t2)
        loss, pearson, spearman_loss = _CMKDStudentNumpy.apply(
            zs, centred, _np.StudentArgs(w_pearson, w_spearman, temperature, zscore, eps, strength, solver)
        )
        return CMKDTerms(loss, pearson, spearman_loss, torch.from_numpy(hard), entropy)
    ft = fused_teacher(teacher, spearman)
    entropy = ft.stats.entropy
    hard = entropy >= (entropy.mean() if entropy_threshold is None else entropy_threshold)
    w_pearson, w_spearman = _weights(hard, zs.dtype, spearman and dynamic_weighting, beta, gamma, factor, t2)
    loss, pearson, spearman_loss = _CMKDStudent.apply(
        zs, ft, _np.StudentArgs(w_pearson, w_spearman, temperature, zscore, eps, strength, solver)
    )
    return CMKDTerms(loss, pearson, spearman_loss, hard, entropy)


def _weights(hard: Any, dtype: Any, dynamic: bool, beta: float, gamma: float, factor: float, t2: float) -> tuple:
    """Eq. 16's per-sample weights on the Pearson and Spearman terms (a tensor or NumPy array ``hard``).

    A flat teacher (``H_i >= threshold``, ``hard``) puts ``beta`` on Pearson and ``gamma`` on Spearman, a sharp
    one the swap; the Pearson weight also carries ``pearson_scale``'s factor, both the optional ``T^2``.
    """
    if not dynamic:
        return beta * factor * t2, gamma * t2
    flat = hard.astype(dtype) if isinstance(hard, np.ndarray) else hard.to(dtype)
    return flat * ((beta - gamma) * factor * t2) + gamma * factor * t2, flat * ((gamma - beta) * t2) + beta * t2


def _as_dtype(stats: TeacherStats, dtype: torch.dtype) -> TeacherStats:
    if stats.probs.dtype == dtype:
        return stats
    return TeacherStats(*(t.to(dtype) for t in (stats.probs, stats.ranks, stats.entropy)))


__all__ = ["FusedTeacher", "cmkd_fused_terms", "fast_teacher_stats", "fused_covers", "fused_teacher"]
