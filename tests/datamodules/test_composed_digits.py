"""ComposedDigitsDataModule against scikit-learn's raw digits: composition, pools, determinism, errors."""

import itertools
import re

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from datamodules import ComposedDigitsDataModule
from datamodules.composed_digits import random_shift

SMALL = {"train_size": 600, "val_size": 200, "test_size": 150, "batch_size": 50}
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def make(**kwargs) -> ComposedDigitsDataModule:
    dm = ComposedDigitsDataModule(**{**SMALL, **kwargs})
    dm.setup("fit")
    return dm


def tensors(dm, split):
    return dm.datasets[split].tensors


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shapes_dtypes_and_label_range(k):
    dm = make(num_digits=k)
    assert dm.num_classes == 10**k and isinstance(dm.num_classes, int)
    assert dm.image_shape == (1, 8, 8 * k)
    for loader, n in ((dm.train_dataloader(), 600), (dm.val_dataloader(), 200), (dm.test_dataloader(), 150)):
        assert len(loader.dataset) == n
        x, y = next(iter(loader))
        assert x.shape == (50, 1, 8, 8 * k) and x.dtype == torch.float32
        assert y.shape == (50,) and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) < 10**k
    x, _ = next(iter(dm.predict_dataloader()))
    assert torch.equal(x, tensors(dm, "test")[0][:50])


def test_num_classes_is_set_before_setup():
    dm = ComposedDigitsDataModule(num_digits=3)
    assert dm.num_classes == 1000 and dm.image_shape == (1, 8, 24)


@pytest.mark.parametrize("normalize", [False, True])
def test_images_are_source_digits_side_by_side(digits, normalize):
    k = 3
    dm = make(num_digits=k, normalize=normalize)
    for split in SPLITS:
        images, labels = tensors(dm, split)
        src = dm.sources[split]
        raw = images.numpy()[:, 0] * dm.std + dm.mean  # back to [0, 1]
        for j in range(k):
            np.testing.assert_allclose(raw[:, :, 8 * j : 8 * j + 8], digits.images[src[:, j]] / 16.0, atol=1e-5)
        expected = sum(digits.target[src[:, j]] * 10 ** (k - 1 - j) for j in range(k))
        np.testing.assert_array_equal(labels.numpy(), expected)


def test_pools_are_disjoint_stratified_and_splits_use_only_their_pool(digits):
    dm = make()
    pools = dm.source_pools
    assert sum(len(p) for p in pools.values()) == len(digits.target)  # 0.6 + 0.2 + 0.2 uses every image
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert np.intersect1d(pools[a], pools[b]).size == 0
    for split, frac in zip(SPLITS, (0.6, 0.2, 0.2)):
        for d in range(10):
            n_d = int((digits.target == d).sum())
            assert abs(int((digits.target[pools[split]] == d).sum()) - frac * n_d) <= 1
        assert np.isin(dm.sources[split], pools[split]).all()
    for split in ("val", "test"):
        assert not np.isin(dm.sources[split], pools["train"]).any()


def test_fractions_below_one_leave_images_unused(digits):
    dm = make(train_fraction=0.5, val_fraction=0.1, test_fraction=0.1)
    assert abs(sum(len(p) for p in dm.source_pools.values()) - 0.7 * len(digits.target)) <= 10
    assert abs(len(dm.source_pools["train"]) - 0.5 * len(digits.target)) <= 10


def test_classes_are_balanced():
    dm = make(train_size=250, val_size=50)
    counts = np.bincount(tensors(dm, "train")[1].numpy(), minlength=100)
    assert counts.sum() == 250 and counts.min() == 2 and counts.max() == 3
    train_labels = tensors(dm, "train")[1].numpy()
    assert np.mean(np.diff(train_labels) == 1) < 0.1  # stored in random class order, not 0, 1, 2, ...
    val_labels = tensors(dm, "val")[1].numpy()
    assert len(np.unique(val_labels)) == 50  # fewer samples than classes: all distinct


def test_same_seed_same_tensors_and_batch_order_other_seed_differs():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for split in SPLITS:
        for ta, tb in zip(tensors(a, split), tensors(b, split)):
            assert torch.equal(ta, tb)
        assert not torch.equal(tensors(a, split)[0], tensors(c, split)[0])
    for (xa, ya), (xb, yb) in zip(a.train_dataloader(), b.train_dataloader()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(iter(a.train_dataloader()))[1], next(iter(c.train_dataloader()))[1])


def test_val_and_test_do_not_depend_on_train_size():
    a, b = make(train_size=600), make(train_size=100)
    for split in ("val", "test"):
        assert torch.equal(tensors(a, split)[0], tensors(b, split)[0])


def test_train_is_shuffled_val_and_test_are_not():
    dm = make()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        x, y = next(iter(loader))
        assert torch.equal(x, tensors(dm, split)[0][:50]) and torch.equal(y, tensors(dm, split)[1][:50])
    loader = dm.train_dataloader()
    first_epoch = torch.cat([y for _, y in loader])
    loader.sampler.set_epoch(1)  # Lightning calls this at the start of every epoch
    second_epoch = torch.cat([y for _, y in loader])
    assert not torch.equal(first_epoch, tensors(dm, "train")[1])
    assert not torch.equal(first_epoch, second_epoch)  # a new order every epoch
    loader.sampler.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in dm.train_dataloader()]), first_epoch)  # same epoch, same order
    assert torch.equal(first_epoch.sort().values, tensors(dm, "train")[1].sort().values)


def test_normalisation_uses_train_pool_statistics(digits):
    dm = make()
    pool_pixels = digits.images[dm.source_pools["train"]] / 16.0
    assert dm.mean == pytest.approx(pool_pixels.mean(), rel=1e-5)
    assert dm.std == pytest.approx(pool_pixels.std(), rel=1e-5)
    x = tensors(dm, "train")[0]
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    raw = make(normalize=False)
    x = tensors(raw, "train")[0]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert (raw.mean, raw.std) == (0.0, 1.0)


def naive_shift(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    out = torch.full_like(image, fill)
    h, w = image.shape[-2:]
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[..., y, x] = image[..., y - dy, x - dx]
    return out


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_matches_naive_translation(max_shift):
    image = torch.randn(2, 5, 7)
    for seed in range(12):
        dy, dx = (
            int(v)
            for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=torch.Generator().manual_seed(seed))
        )
        got = random_shift(image, max_shift, fill=-3.0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, naive_shift(image, dy, dx, -3.0))


def test_augment_shifts_train_images_only():
    plain, aug = make(), make(augment=True)
    images, labels = tensors(plain, "train")
    background = -plain.mean / plain.std
    shifts = set()
    for i in range(100):
        x, y = aug.datasets["train"][i]
        assert y == labels[i]
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(x, naive_shift(images[i], dy, dx, background))
        ]
        assert matches, f"sample {i} is not a <=1-pixel shift of its source"
        shifts.update(matches)
    assert len(shifts) > 3  # the offsets vary
    assert torch.equal(tensors(aug, "val")[0], tensors(plain, "val")[0])
    x, _ = next(iter(aug.train_dataloader()))
    assert x.shape == (50, 1, 8, 16)


def test_fits_and_tests_with_a_lightning_trainer():
    class Tiny(L.LightningModule):
        def __init__(self, num_classes):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, num_classes))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test/acc", (self.net(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ComposedDigitsDataModule(**SMALL)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Tiny(dm.num_classes)
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    # what Lightning logged is the accuracy of the trained model on the first two test batches of the data module
    model.eval()
    with torch.no_grad():
        hits = [(model.net(x).argmax(1) == y).float() for x, y in itertools.islice(dm.test_dataloader(), 2)]
    assert result["test/acc"] == pytest.approx(float(torch.cat(hits).mean()), abs=1e-6)


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match=re.escape("Call `setup()` before requesting the train dataloader.")):
        ComposedDigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_digits": 0}, ValueError, "Expected `num_digits` to be an int in [1, 4], but got 0."),
        ({"num_digits": 5}, ValueError, "Expected `num_digits` to be an int in [1, 4], but got 5."),
        ({"num_digits": 2.0}, TypeError, "Expected `num_digits` to be an int in [1, 4], but got float 2.0."),
        ({"num_digits": True}, TypeError, "Expected `num_digits` to be an int in [1, 4], but got bool True."),
        ({"train_size": 0}, ValueError, "Expected `train_size` to be an int >= 1, but got 0."),
        ({"val_size": -5}, ValueError, "Expected `val_size` to be an int >= 1, but got -5."),
        ({"test_size": 0}, ValueError, "Expected `test_size` to be an int >= 1, but got 0."),
        ({"batch_size": 0}, ValueError, "Expected `batch_size` to be an int >= 1, but got 0."),
        ({"num_workers": -1}, ValueError, "Expected `num_workers` to be an int >= 0, but got -1."),
        ({"seed": -1}, ValueError, "Expected `seed` to be an int >= 0, but got -1."),
        ({"train_fraction": 0.0}, ValueError, "Expected `train_fraction` to be a number in (0, 1), but got 0.0."),
        ({"val_fraction": 1.0}, ValueError, "Expected `val_fraction` to be a number in (0, 1), but got 1.0."),
        ({"test_fraction": True}, ValueError, "Expected `test_fraction` to be a number in (0, 1), but got True."),
        (
            {"train_fraction": 0.7, "val_fraction": 0.2, "test_fraction": 0.2},
            ValueError,
            "Expected `train_fraction`, `val_fraction` and `test_fraction` to sum to at most 1, but got "
            "0.7 + 0.2 + 0.2 = 1.1.",
        ),
        ({"normalize": 1}, TypeError, "Expected `normalize` to be a bool, but got int 1."),
        ({"augment": "yes"}, TypeError, "Expected `augment` to be a bool, but got str 'yes'."),
        ({"pin_memory": 0}, TypeError, "Expected `pin_memory` to be a bool or None, but got int 0."),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ComposedDigitsDataModule(**kwargs)


def test_fraction_too_small_for_a_pool_raises_at_setup():
    dm = ComposedDigitsDataModule(val_fraction=0.001, **SMALL)
    message = "Expected `val_fraction` to leave at least one source image of every digit in the val pool, but got 0.001"
    with pytest.raises(ValueError, match=re.escape(message)):
        dm.setup("fit")
