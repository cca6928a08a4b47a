"""CRD's sample indices from the data modules: (image, target, index, contrast index) with negatives of other
classes, as the reference's CIFAR100InstanceSample ("exact" mode) serves them."""

import numpy as np
import pytest
import torch

from datamodules import CIFAR100DataModule, ImageNetDataModule
from datamodules._contrastive import ContrastiveSampleDataset


def test_contrast_indices_are_the_sample_then_negatives_of_other_classes():
    targets = [i % 5 for i in range(40)]
    data = ContrastiveSampleDataset([(torch.zeros(1), t) for t in targets], targets, 12)
    for i in (0, 7, 39):
        image, target, index, contrast = data[i]
        assert index == i and contrast[0] == i and contrast.shape == (13,) and contrast.dtype == torch.int64
        assert all(targets[j] != target for j in contrast[1:].tolist())
        assert len(set(contrast[1:].tolist())) == 12  # without replacement when enough negatives exist


def test_negatives_are_drawn_with_replacement_when_too_few_and_cover_the_other_classes():
    targets = [0, 0, 1, 2]
    data = ContrastiveSampleDataset([(torch.zeros(1), t) for t in targets], targets, 50)
    contrast = data[0][3]
    assert set(contrast[1:].tolist()) == {2, 3}
    counts = np.bincount(contrast[1:].numpy(), minlength=4)
    assert counts[2] > 10 and counts[3] > 10  # both negatives drawn, uniformly


@pytest.mark.parametrize(
    "make",
    [
        lambda: CIFAR100DataModule(synthetic=True, synthetic_size=32, contrastive_negatives=8, num_workers=0, batch_size=4),
        lambda: ImageNetDataModule(
            synthetic=True, synthetic_size=8, num_classes=4, contrastive_negatives=3, num_workers=0, batch_size=2,
            image_size=32, resize_size=36,
        ),
    ],
)  # fmt: skip
def test_data_modules_serve_crd_batches(make):
    dm = make()
    dm.setup("fit")
    x, y, index, contrast = next(iter(dm.train_dataloader()))
    assert contrast.shape == (x.shape[0], dm.contrastive_negatives + 1)
    torch.testing.assert_close(contrast[:, 0], index)
    assert len(next(iter(dm.val_dataloader()))) == 2  # evaluation batches are unchanged


def test_errors():
    with pytest.raises(
        ValueError, match=r"Expected `contrastive_negatives` to be a positive integer or None, but got 0"
    ):
        CIFAR100DataModule(synthetic=True, contrastive_negatives=0)
    with pytest.raises(ValueError, match=r"Expected `contrastive_negatives` \(CRD\) or `teacher_cache`, but got both"):
        CIFAR100DataModule(synthetic=True, contrastive_negatives=4, teacher_cache="x.npz")
    with pytest.raises(ValueError, match=r"Expected one target per sample \(2\), but got 1 targets"):
        ContrastiveSampleDataset([0, 1], [0], 1)
