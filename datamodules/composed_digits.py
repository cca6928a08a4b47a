"""Composed handwritten digits: an offline, many-class image task built from scikit-learn's UCI digits."""

from __future__ import annotations

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cmkd_lightning.errors import InvalidArgumentError, UsageError
from cmkd_lightning.utilities.optional import require
from cmkd_lightning.utilities.validation import check_bool, check_fraction, check_int, check_optional_bool
from datamodules._io import loader_kwargs
from datamodules._sampling import EpochShuffleSampler

_SPLITS = ("train", "val", "test")
_DIGIT_SIZE = 8  # UCI digits are 8x8
_DIGIT_MAX = 16.0  # ... with integer pixel values 0..16
_SYNTHETIC_DIGITS = 1797  # as many source digits as UCI's set, for `synthetic=True`


def random_shift(image: Tensor, max_shift: int, fill: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Translate ``image`` by a random integer offset, filling the uncovered border with ``fill``.

    The offsets :math:`(\delta_y, \delta_x)` are drawn independently and uniformly from
    :math:`\{-s, \dots, s\}` with :math:`s` = ``max_shift``; pixels moved out of the frame are dropped.

    Args:
        image: tensor of shape ``(C, H, W)``.
        max_shift: largest offset in pixels, ``>= 0``.
        fill: value of the uncovered pixels (the background).
        generator: random generator; the global torch generator when None.

    Returns:
        The shifted image, same shape and dtype as ``image``.

    Example:
        >>> x = torch.arange(9.0).reshape(1, 3, 3)
        >>> random_shift(x, 0, fill=-1.0).equal(x)
        True
    """
    if max_shift == 0:
        return image
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    h, w = image.shape[-2:]
    out = torch.full_like(image, fill)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


class _ShiftedTensorDataset(Dataset):
    """``(image, label)`` pairs from tensors, each image randomly shifted by up to ``max_shift`` pixels."""

    def __init__(self, images: Tensor, labels: Tensor, max_shift: int, fill: float) -> None:
        self.images, self.labels, self.max_shift, self.fill = images, labels, max_shift, fill

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return random_shift(self.images[index], self.max_shift, self.fill), self.labels[index]


def split_source_pools(
    digit_labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Split source-image indices into disjoint train/val/test pools, stratified by digit.

    For each digit the indices of its images are shuffled and cut at the cumulative fractions, so every pool
    holds about ``fraction * n_d`` images of each digit ``d``.

    Args:
        digit_labels: digit of each source image, shape ``(M,)``.
        fractions: the train, val and test fractions, each in (0, 1), summing to at most 1.
        rng: numpy random generator.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted index arrays into ``digit_labels``.
    """
    bounds = np.cumsum(fractions)
    pools: dict[str, list[np.ndarray]] = {split: [] for split in _SPLITS}
    for digit in range(10):
        ids = rng.permutation(np.flatnonzero(digit_labels == digit))
        cuts = [0, *(min(int(round(b * len(ids))), len(ids)) for b in bounds)]
        for split, lo, hi, frac in zip(_SPLITS, cuts[:-1], cuts[1:], fractions):
            if hi <= lo:
                raise InvalidArgumentError(
                    f"Expected `{split}_fraction` to leave at least one source image of every digit in the "
                    f"{split} pool, but got {frac} which leaves none of digit {digit} ({len(ids)} images)."
                )
            pools[split].append(ids[lo:hi])
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


def compose_digits(
    digit_labels: np.ndarray, pool: np.ndarray, num_digits: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    r"""Draw ``size`` composed samples whose source images all come from ``pool``.

    Classes are balanced: every class of :math:`\{0, \dots, 10^k - 1\}` appears
    :math:`\lfloor n / 10^k \rfloor` times and a random subset of them once more, in random order. The class
    :math:`y` is written in base 10 with :math:`k` digits (leading zeros kept, most significant first) and
    digit position :math:`j` gets a source image drawn uniformly from the pool's images of that digit.

    Args:
        digit_labels: digit of each source image, shape ``(M,)``.
        pool: indices into ``digit_labels`` allowed as sources; must hold every digit.
        num_digits: :math:`k`, digits per composed image.
        size: number of composed samples :math:`n`.
        rng: numpy random generator.

    Returns:
        ``(labels, sources)``: class labels of shape ``(n,)`` and source indices of shape ``(n, k)``, with
        ``labels == sum_j digit_labels[sources[:, j]] * 10 ** (k - 1 - j)``.
    """
    num_classes = 10**num_digits
    reps, rest = divmod(size, num_classes)
    labels = np.concatenate([np.tile(np.arange(num_classes), reps), rng.choice(num_classes, rest, replace=False)])
    labels = rng.permutation(labels)
    by_digit = [pool[digit_labels[pool] == d] for d in range(10)]
    sources = np.empty((size, num_digits), dtype=np.int64)
    for j in range(num_digits):
        place_digit = (labels // 10 ** (num_digits - 1 - j)) % 10
        for d in range(10):
            rows = np.flatnonzero(place_digit == d)
            sources[rows, j] = by_digit[d][rng.integers(0, len(by_digit[d]), size=len(rows))]
    return labels.astype(np.int64), sources


class ComposedDigitsDataModule(LightningDataModule):
    r"""UCI handwritten digits composed :math:`k` side by side: :math:`10^k` classes, fully offline.

    scikit-learn ships the 1797 UCI handwritten digits (8×8 images, pixel values 0..16,
    :func:`sklearn.datasets.load_digits`). A composed image puts :math:`k` of them side by side, shape
    ``(1, 8, 8k)``, and its label is the :math:`k`-digit number they spell (``"37"`` → class 37), so
    :math:`k = 2` gives 100 classes and :math:`k = 3` gives 1000, with real inter-class structure (37 looks like
    38 and 87) for rank-based distillation to exploit.

    The *source* digits are first split into disjoint train/val/test pools (stratified by digit, seeded), and
    each split is composed only from its own pool: no val or test image shares a source digit with a training
    image. Classes are balanced within each split (see :func:`compose_digits`). Everything is a deterministic
    function of ``seed``; each split draws from its own random stream, so changing ``train_size`` leaves the
    val and test sets unchanged. Pixels are scaled to [0, 1] and, with ``normalize``, standardised with the mean
    and std of the train pool's source pixels (:attr:`mean`, :attr:`std`).

    Args:
        num_digits: digits per image :math:`k`, in 1..4.
        train_size: number of composed training images.
        val_size: number of composed validation images.
        test_size: number of composed test images (also used by ``predict_dataloader``).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the pool split, the composition and the training shuffle order.
        train_fraction: fraction of each digit's source images in the train pool.
        val_fraction: fraction in the val pool.
        test_fraction: fraction in the test pool (the three sum to at most 1).
        normalize: standardise with the train pool's mean and std (else keep [0, 1]).
        augment: shift each training image by a random offset of up to 1 pixel in each direction, filling
            the border with the background value (validation and test images are never augmented).
        pin_memory: pin host memory; None pins when CUDA is available.
        synthetic: compose random 8x8 source digits (pixel levels 0..16, balanced labels) instead of UCI's,
            for smoke tests and device checks; shapes, classes and dtypes are the same. UCI's digits ship with
            scikit-learn, so the real data needs no files either.

    Attributes:
        num_classes: :math:`10^k`, set at construction (LightningCLI can link it to the model).
        image_shape: ``(1, 8, 8k)``.
        source_pools: after ``setup``, ``{"train", "val", "test"}`` → indices into ``load_digits()`` data.
        sources: after ``setup``, split → ``(n, k)`` source indices of each composed image.

    Example:
        >>> dm = ComposedDigitsDataModule(train_size=256, val_size=64, test_size=64, batch_size=32)
        >>> dm.num_classes, dm.image_shape
        (100, (1, 8, 16))
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), x.dtype, y.dtype
        ((32, 1, 8, 16), torch.float32, torch.int64)
    """

    def __init__(
        self,
        num_digits: int = 2,
        train_size: int = 30000,
        val_size: int = 5000,
        test_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        train_fraction: float = 0.6,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        normalize: bool = True,
        augment: bool = False,
        pin_memory: bool | None = None,
        synthetic: bool = False,
    ) -> None:
        super().__init__()
        check_int(num_digits, "num_digits", minimum=1, maximum=4)
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            check_int(value, name, minimum=1)
        check_int(batch_size, "batch_size", minimum=1)
        check_int(num_workers, "num_workers", minimum=0)
        check_int(seed, "seed", minimum=0)
        fractions = (
            check_fraction(train_fraction, "train_fraction"),
            check_fraction(val_fraction, "val_fraction"),
            check_fraction(test_fraction, "test_fraction"),
        )
        if sum(fractions) > 1.0 + 1e-9:
            raise InvalidArgumentError(
                "Expected `train_fraction`, `val_fraction` and `test_fraction` to sum to at most 1, but got "
                f"{train_fraction} + {val_fraction} + {test_fraction} = {sum(fractions):g}."
            )
        check_bool(normalize, "normalize")
        check_bool(augment, "augment")
        check_optional_bool(pin_memory, "pin_memory")
        check_bool(synthetic, "synthetic")
        self.save_hyperparameters()
        self.synthetic = synthetic

        self.num_digits = num_digits
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.fractions = fractions
        self.normalize = normalize
        self.augment = augment
        self.pin_memory = pin_memory
        self.num_classes: int = 10**num_digits
        self.image_shape: tuple[int, int, int] = (1, _DIGIT_SIZE, _DIGIT_SIZE * num_digits)

        self.mean: float | None = None
        self.std: float | None = None
        self.source_pools: dict[str, np.ndarray] = {}
        self.sources: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits once (cheap numpy indexing); later calls are no-ops."""
        if self.datasets:
            return
        if self.synthetic:  # random 8x8 "digits" with the real pixel levels 0..16, balanced labels
            rng = np.random.default_rng(self.seed)
            images = rng.integers(0, _DIGIT_MAX + 1, (_SYNTHETIC_DIGITS, _DIGIT_SIZE, _DIGIT_SIZE)) / _DIGIT_MAX
            images = images.astype(np.float32)
            digit_labels = np.arange(_SYNTHETIC_DIGITS, dtype=np.int64) % 10
        else:
            sklearn_datasets = require("sklearn.datasets", extra="quickstart", purpose="ComposedDigitsDataModule")
            digits = sklearn_datasets.load_digits()
            images = digits.images.astype(np.float32) / _DIGIT_MAX  # (M, 8, 8) in [0, 1]
            digit_labels = digits.target.astype(np.int64)
        pool_seq, *split_seqs = np.random.SeedSequence(self.seed).spawn(1 + len(_SPLITS))
        self.source_pools = split_source_pools(digit_labels, self.fractions, np.random.default_rng(pool_seq))
        train_pixels = images[self.source_pools["train"]]
        self.mean, self.std = (float(train_pixels.mean()), float(train_pixels.std())) if self.normalize else (0.0, 1.0)

        tensors: dict[str, tuple[Tensor, Tensor]] = {}
        for split, seq in zip(_SPLITS, split_seqs):
            labels, sources = compose_digits(
                digit_labels, self.source_pools[split], self.num_digits, self.sizes[split], np.random.default_rng(seq)
            )
            n = len(labels)
            composed = images[sources].transpose(0, 2, 1, 3).reshape(n, 1, *self.image_shape[1:])
            composed = (composed - self.mean) / self.std
            self.sources[split] = sources
            tensors[split] = (torch.from_numpy(np.ascontiguousarray(composed)), torch.from_numpy(labels))

        background = (0.0 - self.mean) / self.std
        self.datasets = {split: TensorDataset(*tensors[split]) for split in _SPLITS}
        if self.augment:
            self.datasets["train"] = _ShiftedTensorDataset(*tensors["train"], max_shift=1, fill=background)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise UsageError(f"Call `setup()` before requesting the {split} dataloader.")
        sampler = EpochShuffleSampler(len(self.datasets[split]), self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            sampler=sampler,
            **loader_kwargs(self.batch_size, self.num_workers, self.pin_memory),
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled in an order that depends only on ``seed`` and the epoch (resumable)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in fixed order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set, in fixed order."""
        return self._loader("test", shuffle=False)
