r"""Differentiable soft ranks (Blondel et al. 2020, l2 regularisation) in pure PyTorch, torchsort optional.

The ``"torch"`` backend solves the isotonic regression behind the soft rank with a vectorised, round-based
pool-adjacent-violators scheme on all rows at once, on any device; ``"torchsort"`` calls the compiled kernel
of the ``torchsort`` package when it is installed. Both give the same values and gradients.
"""

from __future__ import annotations

import importlib
import math
import warnings
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.utilities.optional import MissingExtraError
from cmkd_lightning.utilities.validation import check_positive

SoftRankBackend = Literal["auto", "torch", "torchsort"]
_BACKENDS = ("auto", "torch", "torchsort")
_HALF_TYPES = (torch.float16, torch.bfloat16)
# torchsort's backward splits the isotonic solution into blocks where neighbours differ by more than this;
# the torch backend pools such neighbours too, so that both backends return the same gradient.
_BLOCK_TOL = 1e-9
# Tuning of the torch backend (on CPU, with `python benchmarks/soft_rank_epsilon.py --timing`): rounds
# 1.._PLAIN_ROUNDS test only neighbouring blocks (the cheapest round); later rounds add chords to boundaries
# 2, 4, ... apart, one more doubling per round, up to 2 ** (_MAX_OFFSETS - 1), as long as a round touches at
# most max(_MIN_ROUND_WORK, N * (n + 1)) boundary slots per offset.
_PLAIN_ROUNDS = 2
_MAX_OFFSETS = 7
_MIN_ROUND_WORK = 1 << 15
# up to this many boundary slots, per-op overhead dominates: keep one fixed layout, never shrink or drop rows
_SMALL_WORK = 1 << 15

_affine_warned = False
_torchsort_affine_checked = False
_torchsort: ModuleType | None = None
_torchsort_missing = False
_torchsort_cuda: bool | None = None


def reset_affine_warning() -> None:
    """Re-arm the once-per-process affine-regime warning of :func:`soft_rank` (for tests)."""
    global _affine_warned, _torchsort_affine_checked
    _affine_warned = False
    _torchsort_affine_checked = False


def soft_rank(
    values: Tensor,
    regularization_strength: float = 1.0,
    backend: SoftRankBackend = "auto",
    validate_args: bool = True,
) -> Tensor:
    r"""Ascending soft ranks of every row: ``1`` for the smallest value, ``n`` for the largest.

    The soft rank is the Euclidean projection of :math:`\theta = x / \varepsilon` onto the permutahedron of
    :math:`\rho = (n, n-1, \dots, 1)` (l2 regularisation), computed through an isotonic regression:

    .. math::

        s = \operatorname{sort}_\downarrow(\theta), \qquad
        v = \operatorname*{arg\,min}_{v_1 \ge v_2 \ge \dots \ge v_n} \lVert v - (s - \rho) \rVert^2, \qquad
        r_\varepsilon(x) = (s - v) \circ \sigma^{-1},

    where :math:`\sigma` is the sorting permutation. :math:`v` is constant on blocks of consecutive sorted
    entries and equals the block mean of :math:`s - \rho` there; the Jacobian is
    :math:`\partial r / \partial x = (I - B) / \varepsilon` in sorted order, :math:`B` averaging within
    blocks. As :math:`\varepsilon \to 0` the soft rank tends to the exact rank; for large :math:`\varepsilon`
    a row is a single block and :math:`r = \theta - \bar\theta + (n + 1) / 2` is an affine map of the input
    (see :func:`soft_rank_affine_rows`). Tied values always share a block, so they get equal soft ranks.
    Semantics equal ``torchsort.soft_rank(values, regularization="l2", regularization_strength=eps)``.

    Paper: Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.

    The ``"torch"`` backend works on the cumulative-sum diagram :math:`P_k = (k, Y_k)`,
    :math:`Y_k = \sum_{i < k} (s - \rho)_i`, whose least concave majorant has the block boundaries as
    vertices. Starting from all :math:`n + 1` points, every round removes, in all rows at once, each boundary
    :math:`k` that lies on or below a chord to other current boundaries :math:`j < k < l` (so it cannot be a
    vertex): first only the neighbouring ones (the classic pool-adjacent-violators test, block mean on the
    left :math:`\le` block mean on the right), in later rounds also boundaries 2, 4, 8, ... apart, so that a
    long cascade of merges is absorbed in a few rounds. The rounds stop when one removes nothing, which is the
    optimality condition of pool-adjacent-violators. Rows that are a single block are detected up front with
    one cumulative sum. Worst case: at most ``n`` rounds in all (every round but the last removes a boundary
    from each unfinished row), each :math:`O(N n)` work (at most 7 chord offsets), so :math:`O(N n^2)`, plus
    the :math:`O(N n \log n)` sort.
    Measured on z-scored inputs (rounds after the first pooling pass): 1 to 5 for ``eps <= 1 / n``, up to 13
    for ``eps`` between ``2 / n`` and ``8 / n`` at ``n = 1000`` (long cascades of merges), none when every row
    is one block (``eps`` above about ``8 / n``). The block decisions use float64 prefix sums (float32 on
    devices without float64); values and gradients are computed in the input precision.

    Args:
        values: ``(N, n)`` floating tensor; ranks are taken along the last dimension. float16 and bfloat16 are
            computed in float32 and returned in the input dtype.
        regularization_strength: :math:`\varepsilon > 0`, in the units of ``values``. Smaller is closer to the
            exact ranks. On z-scored rows, ``eps`` of about ``1 / n`` tracks the exact Spearman correlation,
            while ``eps`` above about ``8 / n`` makes every row affine (``benchmarks/soft_rank_epsilon.py``).
        backend: ``"torch"`` (pure PyTorch, any device), ``"torchsort"`` (compiled kernel; ``pip install
            --no-build-isolation torchsort``) or ``"auto"``: torchsort when it is importable and has a kernel
            for the device of ``values``, else torch.
        validate_args: check that ``values`` is finite (reads the values: one host-device sync) and the
            scalar arguments. Type and shape checks always run. Host-device syncs of the ``"torch"`` backend
            itself: ``2 + R`` per call (``3 + R`` when some row could be a single block), ``R`` the number of
            pooling rounds (see ``docs/DEVICE.md``).

    Returns:
        ``(N, n)`` tensor of soft ranks in the dtype of ``values``, differentiable with respect to ``values``.

    Raises:
        TypeError: if ``values`` is not a floating-point tensor.
        ValueError: if ``values`` is not 2-D, holds NaN/Inf (with ``validate_args``), ``regularization_strength``
            is not a finite number > 0, or ``backend`` is unknown.
        ImportError: if ``backend="torchsort"`` and torchsort is not installed.

    Warns:
        UserWarning: once per process, when every row of a batch is in the affine regime (a single isotonic
            block): a Spearman loss built on these ranks then equals the Pearson loss exactly.

    Example:
        >>> x = torch.tensor([[0.3, -1.2, 2.0, 0.4]])
        >>> soft_rank(x, regularization_strength=1e-3, backend="torch")
        tensor([[2., 1., 4., 3.]])
        >>> soft_rank(x, regularization_strength=0.5, backend="torch")
        tensor([[2.4000, 1.0000, 4.0000, 2.6000]])
    """
    global _torchsort_affine_checked
    _check_values(values)
    if validate_args:
        check_positive(regularization_strength, "regularization_strength")
        if values.numel() and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise InvalidArgumentError(
                f"Expected `values` to be finite, but got {bad} NaN/Inf entries (soft ranks of NaN are undefined)."
            )
    if backend not in _BACKENDS:
        raise InvalidArgumentError(f"Expected `backend` to be one of {_BACKENDS}, but got {backend!r}.")
    eps = float(regularization_strength)
    if backend == "auto":
        backend = "torchsort" if _torchsort_supports(values) else "torch"
    ts = _import_torchsort(required=True) if backend == "torchsort" else None
    if values.numel() == 0:
        return values.clone()

    compute = values.float() if values.dtype in _HALF_TYPES else values
    if ts is not None:
        ranks = ts.soft_rank(compute, regularization="l2", regularization_strength=eps)
        # the check reads the values: every call with validate_args, otherwise only the first call of the process
        if not _affine_warned and (validate_args or not _torchsort_affine_checked):
            _torchsort_affine_checked = True
            with torch.no_grad():
                _maybe_warn_affine(_output_is_affine(ranks.detach(), compute.detach() / eps), values.shape[1])
    else:
        info: dict[str, bool] = {}
        ranks, _ = _SoftRankL2.apply(compute, eps, info)
        if not _affine_warned and info["all_affine"]:  # known on the host already: no extra sync
            _maybe_warn_affine(None, values.shape[1])
    return ranks.to(values.dtype)


def soft_rank_affine_rows(values: Tensor, regularization_strength: float = 1.0) -> Tensor:
    r"""Which rows :func:`soft_rank` maps affinely: the isotonic solution is one single block.

    A row is one block iff every point of the cumulative-sum diagram lies on or below the chord from the first
    to the last point: with :math:`s` sorted descending, :math:`y = s / \varepsilon - (n, \dots, 1)` and
    :math:`Y_k = \sum_{i \le k} y_i`,

    .. math::

        \text{affine} \iff Y_k \le \tfrac{k}{n} Y_n \quad \text{for } k = 1, \dots, n - 1.

    There :math:`r = x / \varepsilon - \overline{x} / \varepsilon + (n + 1) / 2`, so any Pearson correlation
    of the soft ranks equals the Pearson correlation of the raw values: a Spearman loss built on them is the
    Pearson loss. Costs one sort and one cumulative sum, no gradient.

    Paper: Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.

    Args:
        values: ``(N, n)`` floating tensor.
        regularization_strength: :math:`\varepsilon > 0`, as in :func:`soft_rank`.

    Returns:
        ``(N,)`` boolean tensor, ``True`` where the row is in the affine regime.

    Example:
        >>> x = torch.tensor([[0.3, -1.2, 2.0, 0.4]])
        >>> soft_rank_affine_rows(x, 0.1), soft_rank_affine_rows(x, 10.0)
        (tensor([False]), tensor([True]))
    """
    _check_values(values)
    check_positive(regularization_strength, "regularization_strength")
    with torch.no_grad():
        decide = _decision_dtype(values.device)
        theta = values.detach().to(decide) * (1.0 / float(regularization_strength))
        s = torch.sort(theta, dim=1, descending=True).values
        return _single_block_rows(_prefix_sums(s - _weights(s)))


# ------------------------------------------------------------------------------------------------------------
# torch backend


class _SoftRankL2(torch.autograd.Function):
    """Soft rank with a hand-written backward: Jacobian ``(I - B) / eps``, ``B`` averaging per block."""

    @staticmethod
    def forward(ctx, values: Tensor, eps: float, info: dict | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        values = values.contiguous()  # sort keeps the input's strides; the flat views below need rows in order
        n_rows, n = values.shape
        scale = 1.0 / eps
        theta = values * scale
        s, perm = torch.sort(theta, dim=1, descending=True)
        y = s - _weights(s)
        starts, affine = _isotonic_block_starts(y)
        ctx.scale = scale
        ctx.mark_non_differentiable(affine)
        if info is not None:
            info["all_affine"] = starts is None
        if starts is None:  # every row is one block: r = theta - mean(theta) + (n + 1) / 2
            ctx.block = None
            return theta - (theta.mean(1, keepdim=True) - (n + 1) / 2), affine
        # block ids, unique over the batch because every row starts a block; then sizes and means of y
        block = starts.reshape(-1).cumsum(0).sub_(1)
        sizes = torch.zeros(y.numel(), dtype=y.dtype, device=y.device)
        sizes.index_add_(0, block, torch.ones(1, dtype=y.dtype, device=y.device).expand(y.numel()))
        means = torch.zeros_like(sizes).index_add_(0, block, y.reshape(-1)).div_(sizes)
        # block ids in the input order: neither the output nor the backward needs the permutation again
        block = torch.empty_like(perm).scatter_(1, perm, block.view(n_rows, n)).view(-1)
        ctx.block, ctx.sizes = block, sizes
        return theta - means.index_select(0, block).view(n_rows, n), affine

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:  # type: ignore[override]
        if ctx.block is None:
            return (grad - grad.mean(1, keepdim=True)) * ctx.scale, None, None
        block_mean = torch.zeros_like(ctx.sizes).index_add_(0, ctx.block, grad.reshape(-1)).div_(ctx.sizes)
        return (grad - block_mean.index_select(0, ctx.block).reshape(grad.shape)) * ctx.scale, None, None


def _soft_rank_torch(values: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Soft ranks (differentiable) and the ``(N,)`` affine-regime flags (one block per row)."""
    return _SoftRankL2.apply(values, eps, None)


def _isotonic_block_starts(y: Tensor) -> tuple[Tensor | None, Tensor]:
    """Block starts ``(N, n)`` (bool) of the non-increasing isotonic regression of ``y``; single-block rows.

    Block boundaries are the vertices of the least concave majorant of the cumulative-sum diagram
    ``P_k = (k, Y_k)``, ``k = 0..n``. A boundary ``k`` is removed whenever
    ``slope(j, k) <= slope(k, l) + tol`` for boundaries ``j < k < l`` still present (``P_k`` on or below a
    chord; ties pool, and so do neighbours whose means differ by at most ``tol = 1e-9``, as in torchsort's
    backward). The rounds stop when one removes nothing. Returns ``None`` for the starts when every row is a
    single block.
    """
    n_rows, n = y.shape
    device = y.device
    decide = _decision_dtype(device)
    yd = y.to(decide)
    cum = _prefix_sums(yd)
    # a single block needs y_0 <= mean(y) (Y_1 <= Y_n / n): check the whole chord only where that holds
    single = yd[:, 0] * n <= cum[:, n]
    n_single = int(single.sum())
    if n_single:
        single = _single_block_rows(cum)
        n_single = int(single.sum())
        if n_single == n_rows:
            return None, single
    starts = torch.zeros(n_rows, n + 2, dtype=torch.bool, device=device)  # columns n, n + 1: end, padding
    rows = None
    if n_single:
        starts[:, 0] = single
        rows = torch.nonzero(~single).squeeze(1)
        yd, cum = yd.index_select(0, rows), cum.index_select(0, rows)
    n_here = yd.shape[0]
    # round 0, on single elements: pool every run of non-decreasing y (adjacent violators)
    keep = torch.nn.functional.pad(yd.diff(dim=1) < -_BLOCK_TOL, (1, 1), value=True)
    # points (2, R, K): boundary positions and the prefix sums there
    points = torch.stack([torch.arange(n + 1, device=device, dtype=decide).expand(n_here, -1), cum])
    # small problems are bound by per-op overhead: fixed layout, no shrinking, no retiring of finished rows
    small = n_here * (n + 1) <= _SMALL_WORK
    max_offsets = min(_MAX_OFFSETS, n.bit_length())
    budget = max(_MIN_ROUND_WORK, n_rows * (n + 1))
    if small:
        width, before, total = n + 1, n_here * (n + 1), int(keep.sum())
        layouts: dict[int, Tensor] = {}
    else:
        counts, old_counts = keep.sum(1), torch.full((n_here,), n + 1, device=device)
        width, total = (int(v) for v in torch.stack([counts.max(), counts.sum()]).tolist())
        before = n_here * (n + 1)
    round_no = 0
    while total < before:
        if not small and round_no > 0:
            active = counts < old_counts  # rows that lost a boundary in the last round
            n_active = int(active.sum())
            if 2 * n_active <= n_here:  # retire the finished rows once they are the majority
                if rows is None:
                    rows = torch.arange(n_rows, device=device)
                done, active = torch.nonzero(~active).squeeze(1), torch.nonzero(active).squeeze(1)
                where = points[0].index_select(0, done).long()
                where += rows.index_select(0, done).unsqueeze(1) * (n + 2)  # flat index into starts
                starts.view(-1).scatter_(0, where.view(-1), True)
                rows, keep, counts = (v.index_select(0, active) for v in (rows, keep, counts))
                points = points.index_select(1, active)
                n_here, total = n_active, int(counts.sum())
        round_no += 1
        reach = max(1, round_no - _PLAIN_ROUNDS)  # plain rounds first; long cascades widen the reach
        n_offsets = max(1, min(reach, budget // (n_here * width), max_offsets))
        pad = 1 << (n_offsets - 1)
        if small:  # the same few layouts every round: copy a template
            if pad not in layouts:
                layouts[pad] = _layout(n_here, pad, width, n, decide, device)
            full = layouts[pad].clone()
        else:
            full = _layout(n_here, pad, keep.shape[1], n, decide, device)
        slot = keep.cumsum(1).add_(pad).mul_(keep)  # dropped boundaries go to column 0
        full.scatter_(2, slot.expand(2, -1, -1), points)
        points = full[:, :, 1 + pad : 1 + pad + width]
        keep = _kept(full, pad, width, n_offsets)
        before = total
        if small:
            total = int(keep.sum())
        else:
            old_counts, counts = counts, keep.sum(1)
            width, total = (int(v) for v in torch.stack([counts.max(), counts.sum()]).tolist())
    if rows is None:
        starts.scatter_(1, points[0].long(), True)
    else:
        starts.index_copy_(0, rows, _scatter_true(points[0], n + 2))
    starts[:, 0] = True  # always true for finite inputs; keeps block ids valid when a row holds NaN
    return starts[:, :n], single


def _layout(n_rows: int, pad: int, width: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Empty ``(2, R, 1 + pad + width + pad)`` positions / prefix sums for the boundaries of one round.

    Column 0 collects the dropped boundaries, then come ``pad`` copies of the point ``(-1, -inf)``, room for
    ``width`` boundaries and the padding point ``(n + 1, -inf)``. Chords to ``(-1, -inf)`` have slope
    ``+inf``, chords to ``(n + 1, -inf)`` slope ``-inf``: neither removes anything, so the first and last
    boundary stay, and padding entries (zero-length chords, NaN) are never kept.
    """
    row = torch.full((2, 1, 1 + 2 * pad + width), -math.inf, dtype=dtype, device=device)
    row[0, :, : 1 + pad] = -1
    row[0, :, 1 + pad :] = n + 1
    return row.expand(2, n_rows, -1).clone()  # one pass over the memory


def _kept(points: Tensor, pad: int, width: int, n_offsets: int) -> Tensor:
    """``(R, width)`` mask of the boundaries that lie strictly above every chord to neighbouring boundaries.

    ``points`` is a :func:`_layout` filled with the boundaries. Chords reach
    ``1, 2, ..., 2 ** (n_offsets - 1)`` boundaries to each side. A boundary stays when its smallest chord
    slope to the left exceeds its largest to the right by more than the tolerance.
    """
    lo, hi = 1 + pad, 1 + pad + width  # columns of the boundaries
    if n_offsets == 1:  # classic pool-adjacent-violators test: mean of the left block > mean of the right one
        step = points[:, :, lo - 1 : hi + 1].diff(dim=2)
        return (step[1] / step[0]).diff(dim=1) < -_BLOCK_TOL
    center = points[:, :, lo:hi]
    left = right = None
    for i in range(n_offsets):  # shifted views: no index tensors, no gather
        d = 1 << i
        chord = center - points[:, :, lo - d : hi - d]
        left = chord[1] / chord[0] if left is None else torch.minimum(left, chord[1] / chord[0])
        chord = points[:, :, lo + d : hi + d] - center
        right = chord[1] / chord[0] if right is None else torch.maximum(right, chord[1] / chord[0])
    return left > right + _BLOCK_TOL


def _scatter_true(positions: Tensor, width: int) -> Tensor:
    """``(R, width)`` bool with ``True`` at the (float-coded) ``positions`` of every row."""
    index = positions.long()
    return torch.zeros(index.shape[0], width, dtype=torch.bool, device=index.device).scatter_(1, index, True)


def _prefix_sums(y: Tensor) -> Tensor:
    """``(N, n + 1)`` cumulative sums with a leading zero column."""
    return torch.nn.functional.pad(y.cumsum(1), (1, 0))


def _single_block_rows(cum: Tensor) -> Tensor:
    """Rows whose prefix sums ``Y_0..Y_n`` stay on or below the chord ``k / n * Y_n`` (one isotonic block)."""
    n = cum.shape[1] - 1
    k = torch.arange(1, n, device=cum.device, dtype=cum.dtype)
    return (cum[:, 1:n] * n <= cum[:, n:] * k).all(1)


def _weights(s: Tensor) -> Tensor:
    """``(n, n - 1, ..., 1)`` in the dtype and device of ``s``."""
    n = s.shape[1]
    return torch.arange(n, 0, -1, dtype=s.dtype, device=s.device)


def _decision_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# ------------------------------------------------------------------------------------------------------------
# checks, torchsort, warning


def _check_values(values: Tensor) -> None:
    if not isinstance(values, Tensor):
        raise ArgumentTypeError(f"Expected `values` to be a torch.Tensor, but got {type(values).__name__}.")
    if not values.is_floating_point():
        raise ArgumentTypeError(f"Expected `values` to be a floating-point tensor, but got dtype {values.dtype}.")
    if values.ndim != 2:
        raise InvalidArgumentError(
            f"Expected `values` to be 2-D with shape (N, n), but got {values.ndim}-D shape {tuple(values.shape)}."
        )


def _import_torchsort(required: bool) -> ModuleType | None:
    global _torchsort, _torchsort_missing
    if _torchsort is None and not _torchsort_missing:
        try:
            _torchsort = importlib.import_module("torchsort")
        except ImportError:
            _torchsort_missing = True
    if _torchsort is None and required:
        raise MissingExtraError(
            "soft_rank(backend='torchsort') needs the torchsort package, which is not installed. Install it "
            "after torch with `pip install --no-build-isolation torchsort`, or use backend='torch' (pure "
            "PyTorch, same results)."
        )
    return _torchsort


def _torchsort_supports(values: Tensor) -> bool:
    """Whether torchsort is importable and has a kernel for the device of ``values`` (any float dtype)."""
    global _torchsort_cuda
    if _import_torchsort(required=False) is None:
        return False
    if values.device.type == "cpu":
        return True
    if values.device.type != "cuda":
        return False
    if _torchsort_cuda is None:
        try:
            importlib.import_module("torchsort.isotonic_cuda")
            _torchsort_cuda = True
        except ImportError:
            _torchsort_cuda = False
    return _torchsort_cuda


def _output_is_affine(ranks: Tensor, theta: Tensor) -> Tensor:
    """Rows where ``ranks - theta`` is constant up to rounding: one block (O(N n), no sort)."""
    diff = ranks - theta
    tol = 16 * torch.finfo(theta.dtype).eps * (theta.abs().amax(1) + theta.shape[1])
    return (diff.amax(1) - diff.amin(1)) <= tol


def _maybe_warn_affine(affine: Tensor | None, n: int) -> None:
    """Warn once when every row is affine; ``affine=None`` means the caller knows they all are."""
    global _affine_warned
    if _affine_warned or (affine is not None and not bool(affine.all())):
        return
    _affine_warned = True
    warnings.warn(
        "soft_rank: every row of this batch is in the affine regime (the isotonic solution is a single "
        "block), so the soft ranks are an affine map of the input and a Spearman loss built on them equals "
        "the Pearson loss exactly. Use a smaller `regularization_strength`, e.g. eps ~ 1/n on z-scored "
        f"inputs (n = number of entries per row, here {n}). This warning is shown once per process.",
        UserWarning,
        stacklevel=3,
    )


__all__ = ["reset_affine_warning", "soft_rank", "soft_rank_affine_rows"]
