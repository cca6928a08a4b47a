"""Fig. 9: where the student's logits differ from the teacher's, as a class-by-class heatmap (DKD's picture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import matplotlib
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor
from typing_extensions import override

from cmkd_lightning.callbacks._capture import StepLogitsCallback, batch_targets, new_metric, synced
from cmkd_lightning.callbacks._figures import (
    describe_method,
    epoch_number,
    log_image_file,
    run_directory,
    save_figure,
)
from cmkd_lightning.errors import InvalidArgumentError
from cmkd_lightning.metrics.class_gap import (
    DKD_MAX_DIFF,
    GAP_MATRICES,
    ClassLogitGap,
    class_correlation,
    correlation_gap,
    logit_difference,
    mean_off_diagonal,
)
from cmkd_lightning.utilities.validation import (
    check_bool,
    check_optional_path,
    check_positive_float,
    check_positive_int,
    check_str,
)

__all__ = [
    "DKD_MAX_DIFF",
    "LogitCorrelationHeatmap",
    "class_correlation",
    "correlation_gap",
    "draw_class_matrix",
    "draw_correlation_gap",
    "draw_logit_difference",
    "logit_difference",
    "mean_off_diagonal",
    "plot_correlation_gap",
]


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


class LogitCorrelationHeatmap(StepLogitsCallback):
    r"""Fig. 9 of the paper: class-by-class difference between the student's and the teacher's logits.

    Over the validation set, :class:`~cmkd_lightning.metrics.ClassLogitGap` keeps running sums of the student's and
    the teacher's logits per true class (two ``C x C`` tensors and ``C`` counts; no logits are stored), and at the
    end of the epoch forms the mean logit vector of each class; the callback decides when and draws.
    Two matrices can be drawn (``matrix``):

    - ``"logit_difference"`` (default): the paper's Fig. 9, which follows DKD's visualisation: per (true class,
      output class) ``|mean student logit - mean teacher logit|``, diagonal zeroed (:func:`logit_difference`),
      on the fixed scale ``[0, 3]`` of DKD's figure;
    - ``"correlation_gap"``: the gap between the Pearson class-correlation matrices of the class-mean logits,
      diagonal zeroed (:func:`correlation_gap`), on ``[0, 1]``.

    Both are computed every time (:attr:`difference`, :attr:`gap`); the chosen one is drawn
    with a fixed colour scale ``[0, vmax]`` so epochs and runs compare, saved as
    ``logit_correlation_epoch<EEE>.png`` (``EEE``: the epoch, counted from 1) in ``dirpath`` (default
    ``<run dir>/figures``, the run dir being ``trainer.log_dir``, else ``trainer.default_root_dir``) and sent to W&B
    (``log_image``) or TensorBoard (``add_image``) when attached.

    The logits are those the module's own validation step returned (``outputs``, see
    :class:`~cmkd_lightning.callbacks.CorrelationMonitor`), so the callback costs no extra forward. It works
    only on the validation epochs of every ``every_n_epochs``-th training epoch (always in a standalone
    ``trainer.validate``); on other epochs it does nothing. Sums are added over processes before the
    means are formed, so DDP gives the single-process picture. A module without a teacher is skipped with one
    warning.

    Paper: Fig. 9 (ResNet32x4 / ResNet8x4 on CIFAR-100; darker = larger difference).

    Logged metrics (``prefix`` defaults to ``"heatmap/"``):
        - ``heatmap/mean_abs_diff``: mean of the off-diagonal entries of the drawn matrix.
        - ``heatmap/logit_correlation``: the image (W&B / TensorBoard only).

    Attributes:
        difference: the last :func:`logit_difference` matrix; teacher_corr, student_corr, gap: the last
            class-correlation matrices and their gap; all ``(C, C)``, CPU, float64.
        figure_paths: the PNG files written so far; history: one dict per drawing (``epoch``, ``step``,
            ``mean_abs_diff``, ``path``). Both are saved in the trainer's checkpoint, so they survive a resume.

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
        super().__init__()
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        if matrix not in GAP_MATRICES:
            raise InvalidArgumentError(
                f"Expected `matrix` to be 'logit_difference' or 'correlation_gap', but got {matrix!r}."
            )
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
        self._metric: ClassLogitGap | None = None
        self._active = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "figure_paths": [str(p) for p in self.figure_paths]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.figure_paths = [Path(p) for p in state_dict.get("figure_paths", [])]

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
            self._metric = None

    def _new_metric(self, num_classes: int, pl_module: LightningModule) -> ClassLogitGap:
        return new_metric(
            ClassLogitGap(num_classes, matrix=self.matrix, validate_args=False, sync_on_compute=False), pl_module
        )

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
        student, teacher = self.batch_logits(pl_module, outputs, batch)
        if self._metric is None:
            self._metric = self._new_metric(student.shape[1], pl_module)
        self._metric.update(student, teacher, batch_targets(batch))

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        metric, self._metric = self._metric, None
        if metric is None:  # this process saw no batch; it still joins the sync
            num_classes = getattr(pl_module, "num_classes", None)
            if num_classes is None:
                return
            metric = self._new_metric(int(num_classes), pl_module)
        with synced(metric):  # sums over processes
            count = metric.count.detach().cpu().clone()
            student_means, teacher_means = (m.detach().cpu().double() for m in metric.class_means())
        if not bool((count > 0).any()):
            return
        self.student_corr = class_correlation(student_means)
        self.teacher_corr = class_correlation(teacher_means)
        self.gap = correlation_gap(student_means, teacher_means)
        self.difference = logit_difference(student_means, teacher_means)
        drawn = self.difference if self.matrix == "logit_difference" else self.gap
        mean_abs_diff = float(mean_off_diagonal(drawn))
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
        epoch = epoch_number(trainer)  # counted from 1, in the file name as in the title
        path = save_figure(fig, directory / f"logit_correlation_epoch{epoch:03d}.png", self.dpi)
        self.figure_paths.append(path)
        self.history.append(
            {
                "epoch": epoch,
                "step": trainer.global_step,
                "mean_abs_diff": mean_abs_diff,
                "path": str(path),
            }
        )
        log_image_file(trainer, f"{self.prefix}logit_correlation", path)
