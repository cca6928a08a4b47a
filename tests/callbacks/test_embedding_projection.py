import re

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image
from torch.utils.data import Dataset

from cmkd_lightning.callbacks import EmbeddingProjection
from cmkd_lightning.callbacks.embedding_projection import plot_embedding, select_subset, tsne_embedding
from cmkd_lightning.models import extract_features
from tests.callbacks._helpers import cpu_trainer, digits_data, digits_module


class NoLabelAttribute(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels_hidden = images, labels

    def __len__(self):
        return len(self.labels_hidden)

    def __getitem__(self, index):
        return self.images[index], self.labels_hidden[index]


def test_subset_is_fixed_seeded_and_filtered():
    dm = digits_data(val_size=300)
    dm.setup("fit")
    dataset = dm.datasets["val"]
    indices, labels = select_subset(dataset, 20, max_classes=30, seed=3)
    assert len(indices) == 20 and len(set(indices.tolist())) == 20
    assert (labels < 30).all() and (labels == dataset.tensors[1][indices].numpy()).all()
    again = select_subset(NoLabelAttribute(*dataset.tensors), 20, max_classes=30, seed=3)  # reads samples
    np.testing.assert_array_equal(again[0], indices)
    np.testing.assert_array_equal(select_subset(dataset, 20, max_classes=30, seed=4)[0] == indices, False)


def test_projection_at_train_end_matches_direct_tsne(tmp_path):
    dm, module = digits_data(val_size=400), digits_module()
    projection = EmbeddingProjection(num_samples=40, max_classes=12, num_threads=1, seed=1)
    modes = []

    class ModeProbe(Callback):
        def on_train_end(self, trainer, pl_module):
            modes.append(pl_module.student.training)

    trainer = cpu_trainer(tmp_path, [ModeProbe(), projection, ModeProbe()])
    trainer.fit(module, datamodule=dm)
    assert modes == [True, True]  # the projection runs in eval mode and restores train mode

    (path,) = projection.figure_paths
    assert path == tmp_path / "lightning_logs" / "version_0" / "figures" / "tsne_end.png"
    with Image.open(path) as image:
        assert image.size[0] > 700 and image.size[1] > 500
    indices, labels = select_subset(dm.datasets["val"], 40, max_classes=12, seed=1)
    np.testing.assert_array_equal(projection.labels, labels)
    module.eval()
    with torch.no_grad():
        features, _ = extract_features(module.student, dm.datasets["val"].tensors[0][indices])
    expected = tsne_embedding(features.numpy(), seed=1, num_threads=1)
    np.testing.assert_allclose(projection.embedding, expected, atol=1e-4)


def test_every_n_epochs_only(tmp_path):
    module = digits_module()
    projection = EmbeddingProjection(
        num_samples=30, every_n_epochs=1, at_train_end=False, num_threads=1, dirpath=tmp_path / "figs"
    )
    trainer = cpu_trainer(tmp_path, [projection], max_epochs=2, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=digits_data())
    assert projection.figure_paths == [
        tmp_path / "figs" / "tsne_epoch001.png",
        tmp_path / "figs" / "tsne_epoch002.png",
    ]
    assert projection.embedding.shape == (30, 2)


@pytest.mark.parametrize(("num_classes", "legend", "axes"), [(12, True, 1), (40, False, 2)])
def test_legend_for_few_classes_colour_bar_for_many(num_classes, legend, axes):
    labels = np.arange(80) % num_classes
    fig = plot_embedding(np.random.default_rng(0).normal(size=(80, 2)), labels, "title")
    assert (fig.axes[0].get_legend() is not None) is legend
    assert len(fig.axes) == axes  # the colour bar is a second axes
    if legend:
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [str(c) for c in range(num_classes)]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"num_samples": 3},
            ValueError,
            "Expected `num_samples` to be an int >= 5 (t-SNE needs a few points), but got 3.",
        ),
        ({"max_classes": 0}, ValueError, "Expected `max_classes` to be an int >= 1 or None, but got 0."),
        (
            {"every_n_epochs": "2"},
            TypeError,
            "Expected `every_n_epochs` to be an int >= 1 or None, but got str '2'.",
        ),
        ({"perplexity": -1.0}, ValueError, "Expected `perplexity` to be a finite number > 0, but got -1.0."),
        ({"seed": -1}, ValueError, "Expected `seed` to be an int >= 0, but got -1."),
        (
            {"dataset": iter([1])},
            TypeError,
            "Expected `dataset` to be a map-style torch Dataset or None, but got list_iterator.",
        ),
        ({"at_train_end": None}, TypeError, "Expected `at_train_end` to be a bool, but got NoneType None."),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        EmbeddingProjection(**kwargs)
