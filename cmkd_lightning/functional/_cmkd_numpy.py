"""The CPU kernel of the fused CMKD path, in NumPy: teacher statistics, student forward and analytic backward.

The math is that of :mod:`cmkd_lightning.functional.cmkd_fused` (whose torch version runs on CUDA); on CPU a NumPy
call costs a fraction of a torch op's dispatch, and :func:`numpy.argsort` sorts several times faster than
``torch.sort`` (4.9x at 512x1000 on our CPU).
Index gathers and scatters go through torch (zero-copy views of the same memory), which does them 2-3x faster
than :func:`numpy.take_along_axis`. Nothing here creates autograd state: the autograd function that calls it lives
in ``cmkd_fused.py``. Rationale and measurements: ``docs/DESIGN.md`` ("The fused path"), ``BENCHMARKS.md``.

Floating-point warnings are the caller's to silence (torch never warns; ``cmkd_fused.py`` runs these functions
under ``numpy.errstate(all="ignore")``, and the training module's finiteness guard reports non-finite losses).

Conventions: ``(N, C)`` float32 or float64 arrays, C-contiguous; the soft rank is taken in ascending order (the
mirror image of torchsort's descending problem, which needs no reversed copy).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch

_max, _min, _sum = np.maximum.reduce, np.minimum.reduce, np.add.reduce  # ufunc calls skip NumPy's wrappers

_NO_SHIFT = 60.0  # exp(60) and its row sums stay far inside float32's range
MIN_STD = 1e-15  # as the general z-score, which clamps the variance at 1e-30 before the square root
PEARSON_EPS = 1e-8  # as the general Pearson correlation: added to the product of the norms


_TINY = {np.float32: np.finfo(np.float32).tiny, np.float64: np.finfo(np.float64).tiny}


# `np.vecdot` is NumPy >= 2.0; on NumPy 1.x (pyproject allows >= 1.24) the same products go through `einsum`.
_vecdot = getattr(np, "vecdot", None)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product ``(N, C), (N, C) -> (N,)``."""
    if _vecdot is None:
        return np.einsum("...i,...i->...", a, b)
    return _vecdot(a, b)


def _gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``x[i, index[i, j]]`` (torch's gather on views of the same memory)."""
    return torch.from_numpy(x).gather(1, torch.from_numpy(index)).numpy()


class ZScored(NamedTuple):
    """The scale-safe z-score of each row and the pieces its backward needs (see ``zscore`` in this package).

    Attributes:
        scale: ``(N, 1)`` the row's divisor: 1 where the unscaled form is safe, else ``max(max_c |z_c|, 1)``.
        std: ``(N, 1)`` unbiased standard deviation of ``z / scale``, clamped at ``1e-15``.
        d: ``(N, 1)`` ``std + eps / scale``.
        live: ``(N, 1)`` whether the standard deviation was above the clamp (else it has no gradient).
        h: ``(N, C)`` z-scored rows ``(z / scale - mean) / d``.
    """

    scale: np.ndarray
    std: np.ndarray
    d: np.ndarray
    live: np.ndarray
    h: np.ndarray


def zscore(z: np.ndarray, eps: float) -> ZScored:
    """Scale-safe z-score of the rows of ``z`` (the same function as ``cmkd_lightning.functional.zscore``).

    The general z-score divides each row by ``s = max(max |z|, 1)`` first (so squares cannot overflow) and
    clamps the standard deviation of ``z / s`` at ``1e-15``. In exact arithmetic ``s`` cancels, so rows whose
    sum of squares is finite and whose standard deviation is clearly above the clamp (``sigma >= 1e-15 *
    max(|mean| + sqrt(C - 1) sigma, 1)``, a bound on ``max |z|``) are z-scored with ``s = 1`` in four passes
    instead of seven; the rest (overflow, near-constant rows) go through the scaled form.
    """
    c = z.shape[1]
    h = z - _sum(z, 1, keepdims=True) * (1.0 / c)
    std = np.sqrt(rowdot(h, h) * (1.0 / (c - 1)))[:, None]
    bound = np.abs(z[:, :1] - h[:, :1]) + std * math.sqrt(c - 1)  # |mean| + sqrt(C - 1) std >= max |z|
    bound *= 2.0  # margin for the rounding of the bound itself
    np.maximum(bound, 1.0, out=bound)
    fast = (std >= bound * MIN_STD) & (bound < np.inf)  # False for inf and NaN too: redone scaled
    if not fast.all():
        return _zscore_scaled(z, eps, h, std, fast[:, 0])
    d = std + eps
    h /= d
    return ZScored(np.ones_like(std), std, d, fast, h)


def _zscore_scaled(z: np.ndarray, eps: float, h: np.ndarray, std: np.ndarray, fast: np.ndarray) -> ZScored:
    """:func:`zscore` with rows that are not ``fast`` computed the scaled way; ``h``, ``std``: the unscaled pass."""
    c = z.shape[1]
    scale = np.ones_like(std)
    slow = ~fast
    zs = z[slow]
    scale[slow] = np.maximum(np.abs(zs).max(axis=1, keepdims=True), 1.0)
    hs = zs / scale[slow]
    hs -= _sum(hs, 1, keepdims=True) * (1.0 / c)
    h[slow] = hs
    std[slow] = np.sqrt(rowdot(hs, hs) * (1.0 / (c - 1)))[:, None]
    live = std > MIN_STD
    np.maximum(std, MIN_STD, out=std)
    d = std + eps / scale
    h /= d
    return ZScored(scale, std, d, live, h)


def softmax(a: np.ndarray, inverse_temperature: float, bound: float | None = None) -> np.ndarray:
    """``softmax(a / T)`` of each row; ``bound``: a known bound on ``|a|`` (z-scored rows: ``sqrt(C - 1)``).

    Rows are shifted by their maximum before ``exp`` unless ``bound / T`` is small enough for ``exp`` never to
    overflow (the shift changes no value, only the rounding; skipping it saves two passes).
    """
    x = a * inverse_temperature
    if bound is None or bound * inverse_temperature > _NO_SHIFT:
        x -= _max(x, 1, keepdims=True)
    np.exp(x, out=x)
    x /= _sum(x, 1, keepdims=True)
    return x


def softmax_entropy(a: np.ndarray, inverse_temperature: float, bound: float | None = None) -> tuple:
    """``p = softmax(a / T)`` of each row and its entropy, ``-sum p log p = log S - sum p x``.

    ``x`` is ``a / T`` (shifted by its row maximum unless ``bound`` allows, as :func:`softmax`) and
    ``S = sum exp(x)``: no ``log p`` is formed.
    """
    x = a * inverse_temperature
    if bound is None or bound * inverse_temperature > _NO_SHIFT:
        x -= _max(x, 1, keepdims=True)
    p = np.exp(x)
    total = _sum(p, 1)
    p /= total[:, None]
    return p, np.log(total) - rowdot(p, x)


def entropy(a: np.ndarray) -> np.ndarray:
    """Entropy of ``softmax(a)`` of each row, ``log S - sum e x / S`` with ``x = a - max a``, ``e = exp(x)``."""
    x = a - _max(a, 1, keepdims=True)
    e = np.exp(x)
    total = _sum(e, 1)
    return np.log(total) - rowdot(e, x) / total


def exact_ranks(x: np.ndarray) -> np.ndarray:
    """Ascending ranks ``1..C`` of each row, ties averaged (as ``cmkd_lightning.functional.rank``)."""
    n, c = x.shape
    order = np.argsort(x, axis=1)
    ordered = _gather(x, order)
    tie = ordered[:, 1:] == ordered[:, :-1]
    tied_rows = np.flatnonzero(np.logical_or.reduce(tie, 1))
    ranked = torch.arange(1, c + 1, dtype=torch.from_numpy(x).dtype).expand(n, c)
    if tied_rows.size:  # only the rows that hold a tie: first and last position of each group of equal values
        ranked = ranked.numpy().copy()
        tie = tie[tied_rows]
        k = len(tied_rows)
        position = np.broadcast_to(np.arange(c), (k, c))
        starts = np.ones((k, c), dtype=bool)
        starts[:, 1:] = ~tie
        ends = np.ones((k, c), dtype=bool)
        ends[:, :-1] = ~tie
        first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, position, c - 1)[:, ::-1], axis=1)[:, ::-1]
        ranked[tied_rows] = (first + last).astype(x.dtype) * 0.5 + 1.0
        ranked = torch.from_numpy(ranked)
    return torch.empty(n, c, dtype=ranked.dtype).scatter_(1, torch.from_numpy(order), ranked).numpy()


class Teacher(NamedTuple):
    """Teacher statistics, as :class:`~cmkd_lightning.functional.cmkd.TeacherStats` holds them, in NumPy.

    Attributes:
        probs: ``(N, C)`` ``softmax(zscore(z_t) / T)``.
        ranks: ``(N, C)`` exact ascending ranks of ``zscore(z_t)``, ties averaged (``None`` without Spearman).
        entropy: ``(N,)`` Eq. 14's entropy.
    """

    probs: np.ndarray
    ranks: np.ndarray | None
    entropy: np.ndarray


def teacher_stats(
    z: np.ndarray, temperature: float, use_zscore: bool, eps: float, entropy_source: str, ranks: bool = True
) -> Teacher:
    """Teacher probabilities, exact ranks and entropy (as ``cmkd_lightning.functional.teacher_stats``)."""
    h = zscore(z, eps).h if use_zscore else z
    bound = math.sqrt(z.shape[1] - 1) if use_zscore else None
    if entropy_source == "teacher":
        p, h_t = softmax(h, 1.0 / temperature, bound), entropy(z)
    else:
        p, h_t = softmax_entropy(h, 1.0 / temperature, bound)
    return Teacher(p, exact_ranks(h) if ranks else None, h_t)


class Centred(NamedTuple):
    """``probs - 1 / C`` and ``ranks - (C + 1) / 2`` and their ``(N,)`` norms (closed-form row means)."""

    probs: np.ndarray
    probs_norm: np.ndarray
    ranks: np.ndarray | None
    ranks_norm: np.ndarray | None


def centre(probs: np.ndarray, ranks: np.ndarray | None) -> Centred:
    """Centre the teacher's probabilities (rows sum to 1) and ranks (rows sum to ``C (C + 1) / 2``)."""
    c = probs.shape[1]
    pc = probs - 1.0 / c
    pn = np.sqrt(rowdot(pc, pc))
    if ranks is None:
        return Centred(pc, pn, None, None)
    rc = ranks - (c + 1) / 2
    return Centred(pc, pn, rc, np.sqrt(rowdot(rc, rc)))


# ------------------------------------------------------------------------------------------------------------
# isotonic regression of the soft rank


_ts_ops: ModuleType | None = None


def torchsort_ops() -> ModuleType:
    """``torchsort.ops``, imported on first use (both fused kernels call its isotonic kernels)."""
    global _ts_ops
    if _ts_ops is None:
        _ts_ops = importlib.import_module("torchsort.ops")
    return _ts_ops


class Isotonic:
    """Non-increasing isotonic regression ``u`` of the rows of ``y`` and the projection ``g -> g - B g``.

    ``B`` averages ``g`` over the blocks of ``u``: the Jacobian of the soft rank (up to ``1 / eps``) is
    ``I - B``. Small problems (at most ``SMALL`` entries) run torchsort's CPU kernel and its backward when
    torchsort is installed (they win where NumPy's per-call cost dominates); everything else runs
    :class:`PAVBlocks`.
    """

    def __init__(self, y: np.ndarray, solver: str) -> None:
        self.blocks: PAVBlocks | None = None
        if solver == "torchsort" and y.size <= SMALL:
            self.y = torch.from_numpy(y)
            self.sol = torchsort_ops().isotonic_l2["cpu"](self.y)
            self.u = self.sol.numpy()
            return
        self.blocks = PAVBlocks(y)
        self.u = self.blocks.solution(y.shape)

    def project(self, g: np.ndarray) -> np.ndarray:
        """``g - B g`` (overwrites ``g``)."""
        if self.blocks is None:
            g -= torchsort_ops().isotonic_l2_backward["cpu"](self.y, self.sol, torch.from_numpy(g)).numpy()
        else:
            g -= self.blocks.means(g)
        return g


SMALL = 1 << 15
BLOCK_TOL = 1e-9


class PAVBlocks:
    """Pool-adjacent-violators in rounds: the non-increasing isotonic regression of each row of ``y`` as blocks.

    Pooling any two adjacent violators (``y_{j+1} >= y_j``) never changes the solution, so every round pools
    every maximal run of violating neighbours at once. Round 0 pools elements; round 1 pools the resulting
    blocks (full arrays); later rounds only test the pairs next to a block that grew, on a linked list over the
    round-0 blocks. Neighbours whose means differ by at most ``tol`` pool too (as torchsort's backward and the
    torch backend's block search treat them). Rows never mix: each row's first element starts a block.

    Attributes:
        bid: ``(N * C,)`` int32 tensor, the block of each element, numbered from 1 (slot 0 of the block arrays
            is a dummy).
        sizes: block sizes (float, slot 0 = 1).
        sums: block sums of ``y`` (slot 0 = 0).
    """

    def __init__(self, y: np.ndarray, tol: float = BLOCK_TOL) -> None:
        n, c = y.shape
        flat = torch.from_numpy(y.reshape(-1))
        start = np.empty((n, c), dtype=bool)
        start[:, 0] = True
        np.less(y[:, 1:], y[:, :-1] - tol, out=start[:, 1:])
        bid = torch.cumsum(torch.from_numpy(start.reshape(-1)), 0, dtype=torch.int32)
        first = np.flatnonzero(start)
        m = first.size
        sums = torch.zeros(m + 1, dtype=flat.dtype).index_add_(0, bid, flat).numpy()
        cnt = np.empty(m + 1, dtype=y.dtype)
        cnt[0] = 1.0
        np.subtract(first[1:], first[:-1], out=cnt[1:-1], casting="unsafe")
        cnt[-1] = n * c - first[-1]
        self.bid, self.sizes, self.sums = bid, cnt, sums
        if m == n:  # one block per row
            return
        # round 1: every pair of neighbouring blocks (ids k, k + 1) within a row
        row_first = bid.view(n, c)[:, 0].numpy()  # id of each row's first block
        means = sums / cnt
        viol = means[2:] >= means[1:-1] - tol
        viol[row_first[1:] - 2] = False
        left = np.flatnonzero(viol).astype(np.int32) + 1  # the violating pairs (left, right), in list order
        if left.size == 0:
            return
        right = left + 1
        # later rounds: a linked list over the round-0 blocks (id 0: none); only pairs next to a grown block
        nxt = np.arange(1, m + 2, dtype=np.int32)
        nxt[row_first[1:] - 1] = 0
        nxt[0] = nxt[m] = 0
        prv = np.arange(-1, m, dtype=np.int32)
        prv[row_first] = 0
        prv[0] = 0
        alive = np.ones(m + 1, dtype=bool)
        sums_t, cnt_t = torch.from_numpy(sums), torch.from_numpy(cnt)
        while left.size:
            # a run: a chain of pairs, each one's right block the next one's left; it pools into its first block
            k = left.size
            run = np.empty(k, dtype=bool)
            run[0] = True
            np.not_equal(right[:-1], left[1:], out=run[1:])
            starts = np.flatnonzero(run)
            heads = left[starts]
            head_of = torch.from_numpy(heads[np.cumsum(run) - 1])
            sums_t.index_add_(0, head_of, torch.from_numpy(sums[right]))
            cnt_t.index_add_(0, head_of, torch.from_numpy(cnt[right]))
            alive[right] = False
            after = nxt[right[np.append(starts[1:] - 1, k - 1)]]
            nxt[heads] = after
            prv[after] = heads
            prv[0] = 0
            means[heads] = sums[heads] / cnt[heads]
            # pairs that may violate now, in list order: (previous, head) unless the previous block is none or
            # another head (then it is that head's (head, next)), and (head, next) unless next is none
            before = prv[heads]
            keep = np.empty(2 * heads.size, dtype=bool)
            np.not_equal(before, 0, out=keep[0::2])
            keep[2::2] &= before[1:] != heads[:-1]
            np.not_equal(after, 0, out=keep[1::2])
            lefts = np.stack((before, heads), axis=1).reshape(-1)[keep]
            rights = np.stack((heads, after), axis=1).reshape(-1)[keep]
            viol = means[rights] >= means[lefts] - tol
            left, right = lefts[viol], rights[viol]
        final = torch.cumsum(torch.from_numpy(alive), 0, dtype=torch.int32)
        final -= 1  # the position of each block's head among the live blocks; the dummy stays at 0
        self.bid = final.index_select(0, bid)
        self.sizes, self.sums = cnt[alive], sums[alive]

    def solution(self, shape: tuple[int, ...]) -> np.ndarray:
        """The isotonic regression: each element replaced by its block's mean."""
        return torch.from_numpy(self.sums / self.sizes).index_select(0, self.bid).numpy().reshape(shape)

    def means(self, g: np.ndarray) -> np.ndarray:
        """``B g``: each entry of ``g`` replaced by the mean of ``g`` over its block."""
        gt = torch.from_numpy(g.reshape(-1))
        total = torch.zeros(self.sizes.size, dtype=gt.dtype).index_add_(0, self.bid, gt).numpy()
        total /= self.sizes
        return torch.from_numpy(total).index_select(0, self.bid).numpy().reshape(g.shape)


# ------------------------------------------------------------------------------------------------------------
# student side


class StudentArgs(NamedTuple):
    """The settings of one call of the student side (shared by both fused kernels).

    Attributes:
        w_pearson: weight of the Pearson term, ``(N,)`` (Eq. 16 per sample) or a number.
        w_spearman: weight of the Spearman term, ``(N,)`` or a number.
        temperature: softmax temperature ``T``.
        zscore: z-score the student logits first.
        eps: added to the z-score's standard deviation.
        rank_strength: the soft rank's regularisation ``eps_r``; ``None`` without the Spearman term.
        solver: the isotonic solver, ``"torchsort"`` or ``"torch"`` (see ``resolve_solver``).
    """

    w_pearson: Any
    w_spearman: Any
    temperature: float
    zscore: bool
    eps: float
    rank_strength: float | None
    solver: str


class Saved(NamedTuple):
    """What the backward needs from the forward."""

    z: ZScored | None
    h: np.ndarray
    p: np.ndarray
    pc: np.ndarray
    norm_p: np.ndarray
    den_p: np.ndarray
    r_p: np.ndarray
    perm: np.ndarray | None
    iso: Isotonic | None
    teacher_ranks: np.ndarray | None
    rc: np.ndarray | None
    norm_s: np.ndarray | None
    den_s: np.ndarray | None
    r_s: np.ndarray | None


def student_forward(
    zs: np.ndarray, teacher: Centred, args: StudentArgs
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Saved]:
    """Per-sample loss, ``1 - r_pearson`` and ``1 - r_spearman`` (zeros without Spearman), and the saved state."""
    w_pearson, w_spearman, temperature, use_zscore, eps, rank_strength, solver = args
    n, c = zs.shape
    z = zscore(zs, eps) if use_zscore else None
    h = z.h if z is not None else zs
    # Pearson of the probabilities (Eq. 12)
    p = softmax(h, 1.0 / temperature, math.sqrt(c - 1) if use_zscore else None)
    pc = p - _sum(p, 1, keepdims=True) * (1.0 / c)  # not 1 / C: a constant row's rounding must match the general path's
    norm_p = np.sqrt(rowdot(pc, pc))
    den_p = norm_p * teacher.probs_norm + PEARSON_EPS
    r_p = rowdot(pc, teacher.probs) / den_p
    pearson = 1.0 - r_p
    loss = pearson * w_pearson
    if rank_strength is None:
        saved = Saved(z, h, p, pc, norm_p, den_p, r_p, None, None, None, None, None, None, None)
        return loss, pearson, np.zeros_like(pearson), saved
    # soft rank (ascending) of h / eps against the teacher's exact ranks (Eq. 13): the mirror image of
    # torchsort's problem, r = s + iso(1..C - s) with s the sorted values
    perm = np.argsort(h, axis=1)
    s = _gather(h, perm)
    s *= 1.0 / rank_strength
    iso = Isotonic(np.arange(1, c + 1, dtype=s.dtype) - s, solver)
    r = s
    r += iso.u
    r -= _sum(r, 1, keepdims=True) * (1.0 / c)  # not (C + 1) / 2: a tied row must give exactly 0, as in general
    tr = _gather(teacher.ranks, perm)
    norm_s = np.sqrt(rowdot(r, r))
    den_s = norm_s * teacher.ranks_norm + PEARSON_EPS
    r_s = rowdot(r, tr) / den_s
    spearman = 1.0 - r_s
    loss += spearman * w_spearman
    saved = Saved(z, h, p, pc, norm_p, den_p, r_p, perm, iso, tr, r, norm_s, den_s, r_s)
    return loss, pearson, spearman, saved


def student_backward(grad: np.ndarray, saved: Saved, teacher: Centred, args: StudentArgs) -> np.ndarray:
    """Gradient of ``sum(grad * loss)`` with respect to the student logits."""
    w_pearson, w_spearman, temperature, _, _, rank_strength, _ = args
    tiny = _TINY[saved.p.dtype.type]
    # d r / d x = (y_c - r |y_c| x_c / |x_c|) / den; the centring projection is dropped: the softmax and
    # soft-rank backwards below remove any per-row (per-block) constant
    g_r = grad * w_pearson
    g_r /= saved.den_p * -temperature  # with the -1 of d(1 - r) and the softmax's 1 / T
    coef = saved.r_p * teacher.probs_norm / np.maximum(saved.norm_p, tiny)
    gh = saved.pc * coef[:, None]
    np.subtract(teacher.probs, gh, out=gh)
    gh *= g_r[:, None]
    gh -= rowdot(saved.p, gh)[:, None]
    gh *= saved.p
    if rank_strength is not None:
        g_r = grad * w_spearman
        g_r /= saved.den_s
        coef = saved.r_s * teacher.ranks_norm / np.maximum(saved.norm_s, tiny)
        gs = saved.rc * coef[:, None]
        np.subtract(saved.teacher_ranks, gs, out=gs)
        gs *= g_r[:, None] * (-1.0 / rank_strength)
        torch.from_numpy(gh).scatter_add_(1, torch.from_numpy(saved.perm), torch.from_numpy(saved.iso.project(gs)))
    z = saved.z
    if z is None:
        return gh
    # z-score: h = c / (std + eps'), std = sqrt(sum c^2 / (C - 1)), c = z / scale - mean (no gradient through
    # std where the variance is clamped). The centring's projection is left out: both terms above give rows
    # that sum to zero (softmax backward; block-mean projection), and h sums to zero.
    c = gh.shape[1]
    k = rowdot(gh, saved.h)[:, None] * z.live / (z.std * (c - 1) * z.scale)
    gh *= 1.0 / (z.d * z.scale)
    gh -= saved.h * k
    return gh
