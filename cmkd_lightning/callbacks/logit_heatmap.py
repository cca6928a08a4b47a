"""Fig. 9: where the student's logits differ from the teacher's, as a class-by-class heatmap (DKD's picture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import matplotlib
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor
from typing_extensions import override

from cmkd_lightning._validation import (
    check_bool,
    check_optional_path,
    check_positive_float,
    check_positive_int,
    check_str,
)
from cmkd_lightning.callbacks._capture import LogitCapture, batch_inputs, batch_targets, has_teacher
from cmkd_lightning.callbacks._figures import describe_method, log_image_file, run_directory, save_figure


def class_correlation(class_means: Tensor) -> Tensor:
    r"""Pearson correlation between the mean logit vectors of every pair of classes.

    .. math::
        R_{ab} = \operatorname{pearson}(\bar z_a, \bar z_b),\qquad
        \bar z_a = \frac{1}{|\{i: y_i = a\}|} \sum_{i: y_i = a} z_i \in \mathbb{R}^C

    Rows of ``class_means`` that hold NaN (classes without samples) or are constant give NaN rows and columns.

    Args:
        class_means: ``(K, C)`` mean logits per true class.

    Returns:
        ``(K, K)`` symmetric matrix with ones on the diagonal (NaN for the classes above), float64.

    Example:
        >>> class_correlation(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])).round(decimals=4)
        tensor([[ 1., -1.],
                [-1.,  1.]], dtype=torch.float64)
    """
    m = class_means.double()
    centred = m - m.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    unit = centred / norms.masked_fill(norms == 0, float("nan")).unsqueeze(1)
    return (unit @ unit.T).clamp(-1.0, 1.0)


#: Upper end of the colour scale of :func:`logit_difference` in DKD's figure (its ``MAX_DIFF``).
DKD_MAX_DIFF = 3.0
_MATRICES = ("logit_difference", "correlation_gap")


def logit_difference(student_class_means: Tensor, teacher_class_means: Tensor) -> Tensor:
    r"""``|\bar z^s_{a,j} - \bar z^t_{a,j}|``: mean student vs mean teacher logit per (true class, output class).

    .. math::
        D_{aj} = \left|\bar z^s_{a,j} - \bar z^t_{a,j}\right|\ (a \ne j),\qquad D_{aa} = 0,\qquad
        \bar z_{a} = \frac{1}{|\{i: y_i = a\}|} \sum_{i: y_i = a} z_i \in \mathbb{R}^C

    This is the matrix of the paper's Fig. 9, which follows DKD's visualisation (mdistiller,
    ``tools/visualizations/correlation.ipynb``): row ``a`` is the true class, column ``j`` the output class,
    the diagonal is zeroed, and the heatmap is drawn on the fixed scale ``[0, 3]`` (DKD divides by
    ``MAX_DIFF = 3`` and draws ``[0, 1]``; :data:`DKD_MAX_DIFF`). Small everywhere when the student's
    logits match the teacher's class by class.

    Args:
        student_class_means: ``(K, C)`` mean student logits per true class.
        teacher_class_means: ``(K, C)`` mean teacher logits per true class.

    Returns:
        ``(K, C)`` float64 matrix, ``>= 0``, zero where ``a == j`` (NaN rows for classes without samples).

    Example:
        >>> logit_difference(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        tensor([[0.0000, 2.0000],
                [0.5000, 0.0000]], dtype=torch.float64)
    """
    diff = (student_class_means.double() - teacher_class_means.double()).abs()
    k = min(diff.shape)
    diff[torch.arange(k), torch.arange(k)] = 0.0
    return diff


def correlation_gap(student_class_means: Tensor, teacher_class_means: Tensor) -> Tensor:
    r"""``|R^t - R^s|`` of :func:`class_correlation`, with the diagonal set to zero.

    A second view of Fig. 9's caption ("the difference in the correlation matrix of the global logits"), kept as
    an option of :class:`LogitCorrelationHeatmap` (``matrix="correlation_gap"``): the gap between the Pearson
    correlations of the class-mean logit vectors, small everywhere when the student relates the classes as the
    teacher does. The paper's figure itself is :func:`logit_difference`.

    Args:
        student_class_means: ``(K, C)`` mean student logits per true class.
        teacher_class_means: ``(K, C)`` mean teacher logits per true class.

    Returns:
        ``(K, K)`` float64 matrix in ``[0, 2]`` (NaN rows/columns for classes without samples).
    """
    gap = (class_correlation(teacher_class_means) - class_correlation(student_class_means)).abs()
    gap.fill_diagonal_(0.0)
    return gap


def mean_off_diagonal(matrix: Tensor) -> float:
    """Mean of the finite off-diagonal entries of a square matrix (NaN when there are none)."""
    k = matrix.shape[0]
    off = matrix[~torch.eye(k, dtype=torch.bool, device=matrix.device)]
    off = off[torch.isfinite(off)]
    return float(off.mean()) if off.numel() else float("nan")


def draw_class_matrix(
    ax: Axes, matrix: Tensor, *, cmap: str, vmin: float, vmax: float, title: str, colorbar_label: str
) -> AxesImage:
    """Draw a ``(K, K)`` class-by-class matrix on ``ax`` with a fixed colour scale, a colour bar and class ticks.

    NaN entries (classes without samples) are light grey; ticks mark every ``K // 10``-th class so 100 or 1000
    classes stay readable.
    """
    colours = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(
        matrix.detach().cpu().float().numpy(), cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    k = matrix.shape[0]
    ticks = list(range(0, k, max(1, k // 10)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.9).set_label(colorbar_label)
    return image


def draw_correlation_gap(ax: Axes, gap: Tensor, *, vmax: float = 1.0, title: str = "|teacher - student|") -> AxesImage:
    """Draw :func:`correlation_gap` on ``ax``: colour scale fixed to ``[0, vmax]``, darker = larger difference."""
    return draw_class_matrix(
        ax, gap, cmap="PuBuGn", vmin=0.0, vmax=vmax, title=title, colorbar_label="|difference| of correlation"
    )


def draw_logit_difference(
    ax: Axes, difference: Tensor, *, vmax: float = DKD_MAX_DIFF, title: str = "|student - teacher| mean logit"
) -> AxesImage:
    """Draw :func:`logit_difference` on ``ax``: colour scale fixed to ``[0, vmax]`` (DKD: 3), darker = larger."""
    image = draw_class_matrix(
        ax, difference, cmap="PuBuGn", vmin=0.0, vmax=vmax, title=title, colorbar_label="|difference| of mean logit"
    )
    ax.set_xlabel("output class")
    ax.set_ylabel("true class")
    return image


def plot_correlation_gap(
    gap: Tensor,
    *,
    vmax: float = 1.0,
    title: str = "",
    teacher_corr: Tensor | None = None,
    student_corr: Tensor | None = None,
) -> Figure:
    """Heatmap of :func:`correlation_gap` (colour scale fixed to ``[0, vmax]``), optionally beside the two matrices.

    Args:
        gap: ``(K, K)`` matrix from :func:`correlation_gap`.
        vmax: upper end of the colour scale (fixed, so epochs and runs compare).
        title: figure title.
        teacher_corr: ``(K, K)`` teacher class correlations; drawn on a ``[-1, 1]`` scale when given.
        student_corr: ``(K, K)`` student class correlations; drawn when given.

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas; nothing is shown).
    """
    matrices = {"teacher": teacher_corr, "student": student_corr}
    with_matrices = teacher_corr is not None and student_corr is not None
    fig = Figure(figsize=(6.4 * (3 if with_matrices else 1), 5.8), layout="constrained")
    axes = list(fig.subplots(1, 3 if with_matrices else 1, squeeze=False)[0])
    if with_matrices:
        for ax, (name, matrix) in zip(axes, matrices.items()):
            draw_class_matrix(
                ax,
                matrix,
                cmap="RdBu_r",
                vmin=-1.0,
                vmax=1.0,
                title=f"{name}: class correlation",
                colorbar_label="Pearson r",
            )
    draw_correlation_gap(axes[-1], gap, vmax=vmax)
    if title:
        fig.suptitle(title)
    return fig


class LogitCorrelationHeatmap(Callback):
    r"""Fig. 9 of the paper: class-by-class difference between the student's and the teacher's logits.

    Over the validation set, the callback keeps running sums of the student's and the teacher's logits per true
    class (two ``C x C`` tensors and ``C`` counts; no logits are stored), and at the end of the epoch forms the
    mean logit vector of each class. Two matrices can be drawn (``matrix``):

    - ``"logit_difference"`` (default): the paper's Fig. 9, which follows DKD's visualisation: per (true class,
      output class) ``|mean student logit - mean teacher logit|``, diagonal zeroed (:func:`logit_difference`),
      on the fixed scale ``[0, 3]`` of DKD's figure;
    - ``"correlation_gap"``: the gap between the Pearson class-correlation matrices of the class-mean logits,
      diagonal zeroed (:func:`correlation_gap`), on ``[0, 1]``.

    Both are computed every time (:attr:`difference`, :attr:`gap`); the chosen one is drawn
    with a fixed colour scale ``[0, vmax]`` so epochs and runs compare, saved as
    ``logit_correlation_epoch<EEE>.png`` in ``dirpath`` (default ``<run dir>/figures``, the run dir being
    ``trainer.log_dir``, else ``trainer.default_root_dir``) and sent to W&B (``log_image``) or TensorBoard
    (``add_image``) when attached.

    The logits are those of the module's own validation step (forward hooks, see
    :class:`~cmkd_lightning.callbacks.CorrelationMonitor`), so the callback costs no extra forward. It works
    only on the validation epochs of every ``every_n_epochs``-th training epoch (always in a standalone
    ``trainer.validate``); on other epochs it registers nothing. Sums are added over processes before the
    means are formed, so DDP gives the single-process picture. A module without a teacher is skipped with one
    warning.

    Paper: Fig. 9 (ResNet32x4 / ResNet8x4 on CIFAR-100; darker = larger difference).

    Logged metrics (``prefix`` defaults to ``"heatmap/"``):
        - ``heatmap/mean_abs_diff``: mean of the off-diagonal entries of the drawn matrix.
        - ``heatmap/logit_correlation``: the image (W&B / TensorBoard only).

    Attributes:
        difference: the last :func:`logit_difference` matrix; teacher_corr, student_corr, gap: the last
            class-correlation matrices and their gap; all ``(C, C)``, CPU, float64.
        figure_paths: the PNG files written so far.

    Args:
        every_n_epochs: draw on every this many training epochs.
        matrix: ``"logit_difference"`` (the paper's, default) or ``"correlation_gap"``.
        vmax: upper end of the fixed colour scale (its lower end is 0); ``None``: 3 for ``"logit_difference"``
            (DKD's), 1 for ``"correlation_gap"``.
        include_matrices: with ``"correlation_gap"``, also draw the two correlation matrices beside the gap.
        dirpath: folder for the PNGs instead of ``<run dir>/figures``.
        prefix: prepended to the logged keys.
        dpi: resolution of the PNG.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        matrix: Literal["logit_difference", "correlation_gap"] = "logit_difference",
        vmax: float | None = None,
        include_matrices: bool = False,
        dirpath: str | Path | None = None,
        prefix: str = "heatmap/",
        dpi: int = 120,
    ) -> None:
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        if matrix not in _MATRICES:
            raise ValueError(f"Expected `matrix` to be 'logit_difference' or 'correlation_gap', but got {matrix!r}.")
        self.matrix = matrix
        if vmax is None:
            vmax = DKD_MAX_DIFF if matrix == "logit_difference" else 1.0
        self.vmax = check_positive_float(vmax, "vmax")
        self.include_matrices = check_bool(include_matrices, "include_matrices")
        self.dirpath = check_optional_path(dirpath, "dirpath")
        self.prefix = check_str(prefix, "prefix")
        self.dpi = check_positive_int(dpi, "dpi")
        self.teacher_corr: Tensor | None = None
        self.student_corr: Tensor | None = None
        self.gap: Tensor | None = None
        self.difference: Tensor | None = None
        self.figure_paths: list[Path] = []
        self._capture = LogitCapture()
        self._enabled = True
        self._active = False
        self._warned = False
        self._sums: dict[str, Tensor] = {}

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_teacher(pl_module)
        if not self._enabled and not self._warned:
            self._warned = True
            rank_zero_warn("LogitCorrelationHeatmap: the LightningModule has no `teacher`; the callback is skipped.")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._capture.detach()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._capture.detach()

    def _due(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = self._enabled and self._due(trainer)
        if self._active:
            self._capture.attach(pl_module)
            self._sums = {}

    @override
    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active:
            self._capture.clear()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active:
            return
        student, teacher = self._capture.logits(pl_module, batch_inputs(batch))
        targets = batch_targets(batch).long()
        if not self._sums:
            c = student.shape[1]
            dtype = torch.float32 if student.device.type == "mps" else torch.float64
            self._sums = {
                "student": torch.zeros(c, c, dtype=dtype, device=student.device),
                "teacher": torch.zeros(c, c, dtype=dtype, device=student.device),
                "count": torch.zeros(c, dtype=dtype, device=student.device),
            }
        sums = self._sums
        sums["student"].index_add_(0, targets, student.to(sums["student"].dtype))
        sums["teacher"].index_add_(0, targets, teacher.to(sums["teacher"].dtype))
        sums["count"].index_add_(0, targets, torch.ones_like(targets, dtype=sums["count"].dtype))

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._capture.detach()
        num_classes = getattr(pl_module, "num_classes", None)
        if not self._sums:  # this process saw no batch; it still joins the reduction
            c = int(num_classes) if num_classes is not None else 0
            zeros = torch.zeros(c, c, dtype=torch.float64, device=pl_module.device)
            self._sums = {"student": zeros, "teacher": zeros.clone(), "count": zeros.new_zeros(c)}
        c = self._sums["count"].shape[0]
        flat = torch.cat([self._sums["student"].flatten(), self._sums["teacher"].flatten(), self._sums["count"]])
        self._sums = {}
        flat = trainer.strategy.reduce(flat, reduce_op="sum").cpu().double()
        student_sum, teacher_sum = flat[: c * c].view(c, c), flat[c * c : 2 * c * c].view(c, c)
        count = flat[2 * c * c :]
        if c == 0 or not bool((count > 0).any()):
            return
        present = (count > 0).unsqueeze(1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        student_means = torch.where(present, student_sum / count.clamp_min(1).unsqueeze(1), nan)
        teacher_means = torch.where(present, teacher_sum / count.clamp_min(1).unsqueeze(1), nan)
        self.student_corr = class_correlation(student_means)
        self.teacher_corr = class_correlation(teacher_means)
        self.gap = correlation_gap(student_means, teacher_means)
        self.difference = logit_difference(student_means, teacher_means)
        drawn = self.difference if self.matrix == "logit_difference" else self.gap
        mean_abs_diff = mean_off_diagonal(drawn)
        pl_module.log(f"{self.prefix}mean_abs_diff", mean_abs_diff, on_step=False, on_epoch=True, sync_dist=False)

        directory = run_directory(trainer, self.dirpath, "figures")  # a collective under DDP: every process calls it
        if not trainer.is_global_zero:
            return
        when = (
            f"after epoch {trainer.current_epoch + 1} of {trainer.max_epochs}"
            if trainer.state.fn == TrainerFn.FITTING
            else f"validation after {trainer.current_epoch} epoch(s)"
        )
        what = (
            "mean logit per (true class, output class)"
            if self.matrix == "logit_difference"
            else "class correlation of mean logits"
        )
        title = (
            f"{describe_method(pl_module)}\n"
            f"Teacher vs student: {what}, {when}\n"
            f"mean off-diagonal |difference| = {mean_abs_diff:.3f} ({int(count.sum())} validation samples)"
        )
        if self.matrix == "logit_difference":
            fig = Figure(figsize=(6.4, 5.8), layout="constrained")
            draw_logit_difference(fig.subplots(), self.difference, vmax=self.vmax)
            fig.suptitle(title)
        else:
            fig = plot_correlation_gap(
                self.gap,
                vmax=self.vmax,
                title=title,
                teacher_corr=self.teacher_corr if self.include_matrices else None,
                student_corr=self.student_corr if self.include_matrices else None,
            )
        path = save_figure(fig, directory / f"logit_correlation_epoch{trainer.current_epoch:03d}.png", self.dpi)
        self.figure_paths.append(path)
        log_image_file(trainer, f"{self.prefix}logit_correlation", path)
