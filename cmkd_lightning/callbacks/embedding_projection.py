"""Fig. 10: a t-SNE map of the student's penultimate features on a fixed subset of the validation set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from typing_extensions import override

from cmkd_lightning.callbacks._figures import describe_method, log_image_file, run_directory, save_figure
from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError
from cmkd_lightning.models import extract_features
from cmkd_lightning.utilities.optional import require
from cmkd_lightning.utilities.validation import (
    check_bool,
    check_non_negative_int,
    check_optional_path,
    check_optional_positive_int,
    check_positive_float,
    check_positive_int,
    check_str,
)

_LEGEND_MAX_CLASSES = 20


def dataset_labels(dataset: Dataset) -> np.ndarray | None:
    """The labels of a classification dataset without loading its images, or ``None`` when not exposed.

    Understands :class:`~torch.utils.data.TensorDataset` (second tensor), :class:`~torch.utils.data.Subset`,
    and datasets with a ``targets`` (torchvision) or ``labels`` attribute.
    """
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].detach().cpu().numpy()
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    return None


def select_subset(
    dataset: Dataset, num_samples: int, max_classes: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded subset: the first ``num_samples`` indices of a seeded permutation with label < max_classes.

    Args:
        dataset: ``(x, y)`` dataset.
        num_samples: subset size (fewer when the dataset holds fewer eligible samples).
        max_classes: keep only the classes ``0 .. max_classes - 1``; ``None`` keeps all.
        seed: seed of the permutation.

    Returns:
        ``(indices, labels)`` as int64 arrays.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).numpy()
    labels = dataset_labels(dataset)
    if labels is not None:
        labels = labels.astype(np.int64)[order]
        keep = np.ones(len(order), dtype=bool) if max_classes is None else labels < max_classes
        return order[keep][:num_samples], labels[keep][:num_samples]
    indices, picked = [], []
    for index in order:  # no label attribute: read samples until enough are found
        label = int(dataset[int(index)][1])
        if max_classes is None or label < max_classes:
            indices.append(int(index))
            picked.append(label)
            if len(indices) == num_samples:
                break
    return np.asarray(indices, dtype=np.int64), np.asarray(picked, dtype=np.int64)


def tsne_embedding(
    features: np.ndarray, perplexity: float = 30.0, seed: int = 0, num_threads: int | None = None
) -> np.ndarray:
    """Two-dimensional t-SNE (scikit-learn, PCA initialisation, seeded) of ``(n, D)`` features.

    The perplexity is capped at ``(n - 1) / 3`` so small subsets work. ``num_threads`` limits the OpenMP/BLAS
    threads of the computation (``None``: the libraries' default); on a busy machine 1 thread can be several
    times faster than contending for all cores.
    """
    TSNE = require("sklearn.manifold", extra="figures", purpose="EmbeddingProjection (t-SNE)").TSNE
    threadpool_limits = require("threadpoolctl", extra="figures", purpose="EmbeddingProjection").threadpool_limits

    n = features.shape[0]
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=num_threads):
        return tsne.fit_transform(features.astype(np.float32))


# 20 colours chosen to be told apart (after Sasha Trubetskoy's "20 distinct colours", white-ish ones replaced by
# black and grey); classes 10-19 also get a triangle marker, so no two classes share colour and shape.
_DISTINCT_COLOURS = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#000000", "#808000",
    "#800000", "#469990", "#ffe119", "#000075", "#bfef45", "#a9a9a9", "#fabed4", "#dcbeff", "#aaffc3", "#ffd8b1",
)  # fmt: skip


def draw_embedding(ax: Axes, embedding: np.ndarray, labels: np.ndarray, title: str = "") -> None:
    """Scatter a 2-D embedding on ``ax``, coloured by class.

    Up to 10 classes get ``tab10`` colours, up to 20 twenty distinct colours with a circle marker for the first
    ten classes and a triangle for the rest, both with a legend; more classes a continuous colour map (``turbo``)
    and a colour bar.
    """
    classes = np.unique(labels)
    if len(classes) <= _LEGEND_MAX_CLASSES:
        tab10 = matplotlib.colormaps["tab10"]
        for i, cls in enumerate(classes):
            mask = labels == cls
            ax.scatter(
                embedding[mask, 0],
                embedding[mask, 1],
                s=12 if i < 10 else 16,
                color=tab10(i) if len(classes) <= 10 else _DISTINCT_COLOURS[i],
                marker="o" if i < 10 else "^",
                label=str(cls),
                alpha=0.85,
                edgecolors="0.25",
                linewidths=0.2,
            )
        ax.legend(
            title="class",
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            markerscale=1.6,
            fontsize="small",
            ncols=1 if len(classes) <= 10 else 2,
        )
    else:
        points = ax.scatter(
            embedding[:, 0],
            embedding[:, 1],
            c=labels,
            cmap="turbo",
            s=10,
            alpha=0.85,
            linewidths=0,
            vmin=int(classes.min()),
            vmax=int(classes.max()),
        )
        ax.figure.colorbar(points, ax=ax, shrink=0.9).set_label("class")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title)


def plot_embedding(embedding: np.ndarray, labels: np.ndarray, title: str = "") -> Figure:
    """A figure with :func:`draw_embedding` (Agg canvas; nothing is shown)."""
    fig = Figure(figsize=(8.0, 6.4), layout="constrained")
    draw_embedding(fig.subplots(), embedding, labels, title)
    return fig


class EmbeddingProjection(Callback):
    r"""Fig. 10 of the paper: t-SNE of the student's penultimate features, coloured by class.

    On a fixed subset of the validation set (the first ``num_samples`` entries of a permutation seeded with
    ``seed``, optionally only the classes ``0 .. max_classes - 1``; the same samples every time), the student
    runs in eval mode under ``torch.no_grad()`` and :func:`~cmkd_lightning.models.extract_features` takes the
    input of its final linear layer; scikit-learn's ``TSNE`` (seeded, PCA initialisation) maps the features to
    2-D. The plot has a legend for up to 20 classes and a colour bar beyond. It is saved as
    ``tsne_end.png`` / ``tsne_epoch<EEE>.png`` (``EEE``: the epoch, counted from 1) in ``dirpath`` (default
    ``<run dir>/figures``) and sent to W&B / TensorBoard when attached.

    When: at the end of training by default (``on_train_end``, the last fit hook before the strategy moves the
    model off its device and releases the dataloaders; ``on_fit_end`` comes after both), and, with
    ``every_n_epochs``, after the validation of every n-th epoch. Nothing runs on other epochs. Only global
    rank 0 computes (one student forward over the subset, then t-SNE: a few seconds for 1000 samples on a CPU).

    The data is ``dataset`` if given, else the dataset of the (first) validation dataloader, else the
    datamodule's ``val_dataloader()``.

    Logged metrics:
        - ``embedding/tsne``: the image (W&B / TensorBoard only; ``prefix`` defaults to ``"embedding/"``).

    Attributes:
        embedding: the last ``(n, 2)`` t-SNE coordinates; ``labels``: their ``(n,)`` classes.
        figure_paths: the PNG files written so far (saved in the trainer's checkpoint: they survive a resume).

    Args:
        num_samples: size of the subset.
        max_classes: plot only the classes ``0 .. max_classes - 1`` (e.g. 20 of CIFAR-100); ``None`` for all.
        every_n_epochs: also draw after every this many epochs' validation; ``None`` disables it.
        at_train_end: draw at the end of training.
        perplexity: t-SNE perplexity (capped at ``(n - 1) / 3``).
        seed: seed of the subset and of t-SNE.
        batch_size: batch size of the feature pass.
        num_workers: DataLoader workers of the feature pass.
        num_threads: OpenMP/BLAS threads for t-SNE; ``None`` keeps the libraries' default.
        dataset: ``(x, y)`` dataset to use instead of the validation set.
        dirpath: folder for the PNGs instead of ``<run dir>/figures``.
        prefix: prepended to the logged image key.
        dpi: resolution of the PNG.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        max_classes: int | None = None,
        every_n_epochs: int | None = None,
        at_train_end: bool = True,
        perplexity: float = 30.0,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        num_threads: int | None = None,
        dataset: Dataset | None = None,
        dirpath: str | Path | None = None,
        prefix: str = "embedding/",
        dpi: int = 120,
    ) -> None:
        self.num_samples = check_positive_int(num_samples, "num_samples")
        if num_samples < 5:
            raise InvalidArgumentError(
                f"Expected `num_samples` to be an int >= 5 (t-SNE needs a few points), but got {num_samples}."
            )
        self.max_classes = check_optional_positive_int(max_classes, "max_classes")
        self.every_n_epochs = check_optional_positive_int(every_n_epochs, "every_n_epochs")
        self.at_train_end = check_bool(at_train_end, "at_train_end")
        self.perplexity = check_positive_float(perplexity, "perplexity")
        self.seed = check_non_negative_int(seed, "seed")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_workers = check_non_negative_int(num_workers, "num_workers")
        self.num_threads = check_optional_positive_int(num_threads, "num_threads")
        if dataset is not None and not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise ArgumentTypeError(
                f"Expected `dataset` to be a map-style torch Dataset or None, but got {type(dataset).__name__}."
            )
        self.dataset = dataset
        self.dirpath = check_optional_path(dirpath, "dirpath")
        self.prefix = check_str(prefix, "prefix")
        self.dpi = check_positive_int(dpi, "dpi")
        self.embedding: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.figure_paths: list[Path] = []
        self._subset: tuple[Dataset, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"figure_paths": [str(path) for path in self.figure_paths]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.figure_paths = [Path(path) for path in state_dict.get("figure_paths", [])]

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_epochs
        if n is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if (trainer.current_epoch + 1) % n == 0:
            epoch = trainer.current_epoch + 1  # counted from 1, in the file name as in the title
            when = f"after epoch {epoch} of {trainer.max_epochs}"
            self._project(trainer, pl_module, f"tsne_epoch{epoch:03d}.png", when)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_train_end:
            epochs = trainer.current_epoch  # after fit: the number of epochs trained
            when = f"after epoch {epochs} of {trainer.max_epochs} (end)"
            self._project(trainer, pl_module, "tsne_end.png", when)

    # ------------------------------------------------------------------ work
    def _find_dataset(self, trainer: Trainer) -> Dataset | None:
        if self.dataset is not None:
            return self.dataset
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if isinstance(loaders, DataLoader):
            return loaders.dataset
        datamodule = trainer.datamodule
        if datamodule is not None:
            loader = datamodule.val_dataloader()
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if loader else None
            if isinstance(loader, DataLoader):
                return loader.dataset
        return None

    @torch.no_grad()
    def _features(self, network: nn.Module, dataset: Dataset, indices: np.ndarray, device: torch.device) -> np.ndarray:
        loader = DataLoader(
            Subset(dataset, indices.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        was_training = network.training
        network.eval()
        try:
            chunks = [extract_features(network, batch[0].to(device))[0].flatten(1).float().cpu() for batch in loader]
        finally:
            network.train(was_training)
        return torch.cat(chunks).numpy()

    def _project(self, trainer: Trainer, pl_module: LightningModule, filename: str, when: str) -> None:
        directory = run_directory(trainer, self.dirpath, "figures")  # a collective under DDP: every process calls it
        if not trainer.is_global_zero:
            return
        dataset = self._find_dataset(trainer)
        if dataset is None:
            rank_zero_warn("EmbeddingProjection: no `dataset` and no validation data to project; skipped.")
            return
        if self._subset is None or self._subset[0] is not dataset:
            self._subset = (dataset, *select_subset(dataset, self.num_samples, self.max_classes, self.seed))
        _, indices, labels = self._subset
        if len(indices) < 5:
            rank_zero_warn(f"EmbeddingProjection: only {len(indices)} samples match `max_classes`; skipped.")
            return
        network = getattr(pl_module, "student", None)
        network = network if isinstance(network, nn.Module) else pl_module
        features = self._features(network, dataset, indices, pl_module.device)
        self.embedding, self.labels = (
            tsne_embedding(features, self.perplexity, self.seed, self.num_threads),
            labels,
        )
        num_classes = len(np.unique(labels))
        title = (
            f"{describe_method(pl_module)}\n"
            f"t-SNE of the student's penultimate features, {when}\n"
            f"{len(labels)} {'validation ' if self.dataset is None else ''}samples, {num_classes} classes"
        )
        fig = plot_embedding(self.embedding, labels, title)
        path = save_figure(fig, directory / filename, self.dpi)
        self.figure_paths.append(path)
        log_image_file(trainer, f"{self.prefix}tsne", path)
