r"""The 162 views of CIFAR's training augmentation, enumerated, and the exact tensors they produce.

RandomCrop(32, padding=4) followed by RandomHorizontalFlip draws a crop offset ``(top, left)`` in
``{0, ..., 8}^2`` and a flip bit, uniformly: 9 x 9 x 2 = 162 views of each image. View ``v`` is

.. math::
    v = 18\,\mathrm{top} + 2\,\mathrm{left} + \mathrm{flip}, \qquad v \in \{0, \dots, 161\},

so ``top = v // 18``, ``left = (v // 2) % 9``, ``flip = v % 2``. View 80 (``top = left = 4``, no flip) is the
image itself. :func:`render_views` turns ``uint8`` images and view indices into the normalised ``float32`` tensors
that torchvision's ``Pad(4) -> crop -> hflip -> ToTensor -> Normalize`` gives, value for value: the teacher-logit
cache is built from these tensors and the data module trains on them, so a cached logit is the teacher's output on
exactly the training input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError

#: Crop size, zero padding and the number of offsets per axis of CIFAR's RandomCrop(32, padding=4).
CROP, PADDING = 32, 4
OFFSETS = 2 * PADDING + 1
#: Number of distinct training views of one image: 9 offsets x 9 offsets x 2 flips.
NUM_VIEWS = OFFSETS * OFFSETS * 2
#: The view without shift or flip: the image itself.
IDENTITY_VIEW = 2 * OFFSETS * PADDING + 2 * PADDING


def view_params(view: int) -> tuple[int, int, bool]:
    """``(top, left, flip)`` of view ``view`` (see the module docstring for the enumeration).

    Example:
        >>> view_params(0), view_params(IDENTITY_VIEW), view_params(NUM_VIEWS - 1)
        ((0, 0, False), (4, 4, False), (8, 8, True))
    """
    if isinstance(view, bool) or not isinstance(view, (int, np.integer)) or not 0 <= view < NUM_VIEWS:
        raise InvalidArgumentError(f"Expected `view` to be an int in [0, {NUM_VIEWS}), but got {view!r}.")
    view = int(view)
    return view // (2 * OFFSETS), (view // 2) % OFFSETS, bool(view % 2)


def transform_spec(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The description of the views that a cache header stores and a data module compares with its own.

    Args:
        mean: per-channel mean of ``Normalize``.
        std: per-channel std of ``Normalize``.

    Example:
        >>> transform_spec((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))["num_views"]
        162
    """
    return {
        "name": "cifar_random_crop_flip",
        "version": 1,
        "crop": CROP,
        "padding": PADDING,
        "fill": 0,
        "flip": "horizontal",
        "num_views": NUM_VIEWS,
        "view_index": "18 * top + 2 * left + flip",
        "to_tensor": "uint8 / 255",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def _normalise(padded: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``ToTensor`` + ``Normalize`` of ``(..., H, W, 3)`` uint8 as torchvision computes them: ``(x / 255 - m) / s``."""
    x = padded.movedim(-1, -3).to(torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub(m).div(s)


def _pad(images: Tensor) -> Tensor:
    """Zero-pad ``(N, H, W, 3)`` uint8 images by ``PADDING`` pixels on each side of ``H`` and ``W``."""
    return F.pad(images, (0, 0, PADDING, PADDING, PADDING, PADDING))


def _check_images(images: np.ndarray | Tensor) -> Tensor:
    """``images`` as a uint8 tensor of shape ``(N, 32, 32, 3)``, or a ValueError saying what it was."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (CROP, CROP, 3):
        raise InvalidArgumentError(
            f"Expected `images` to be uint8 of shape (N, {CROP}, {CROP}, 3), but got {images.dtype} of shape "
            f"{tuple(images.shape)}."
        )
    return images


def render_views(images: np.ndarray | Tensor, views: np.ndarray | Tensor | Sequence[int], mean, std) -> Tensor:
    """Normalised ``float32`` tensors of the given views of ``uint8`` images.

    Args:
        images: ``(N, 32, 32, 3)`` uint8 (CIFAR's on-disk layout, HWC).
        views: ``(N,)`` view indices in ``[0, 162)``, one per image.
        mean: per-channel mean of ``Normalize``.
        std: per-channel std of ``Normalize``.

    Returns:
        ``(N, 3, 32, 32)`` float32, equal to torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``
        + ``ToTensor`` + ``Normalize`` when they draw that view.

    Example:
        >>> images = np.zeros((2, 32, 32, 3), np.uint8)
        >>> render_views(images, [0, IDENTITY_VIEW], (0.5,) * 3, (0.25,) * 3).shape
        torch.Size([2, 3, 32, 32])
    """
    images = _check_images(images)
    views = torch.as_tensor(views, dtype=torch.int64).reshape(-1)
    if views.shape[0] != images.shape[0]:
        raise InvalidArgumentError(f"Expected one view per image ({images.shape[0]}), but got {views.shape[0]}.")
    x = _normalise(_pad(images), mean, std)
    out = []
    for image, view in zip(x, views.tolist()):
        top, left, flip = view_params(view)
        crop = image[:, top : top + CROP, left : left + CROP]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out) if out else x.new_empty((0, 3, CROP, CROP))


def render_all_views(images: np.ndarray | Tensor, mean, std) -> Tensor:
    """Every view of every image, view-major per image: ``(N * 162, 3, 32, 32)``, row ``162 * i + v``.

    Equal, value for value, to :func:`render_views` of ``images[i]`` and view ``v``.

    Example:
        >>> render_all_views(np.zeros((1, 32, 32, 3), np.uint8), (0.5,) * 3, (0.25,) * 3).shape
        torch.Size([162, 3, 32, 32])
    """
    images = _check_images(images)
    x = _normalise(_pad(images), mean, std)  # (N, 3, 40, 40)
    crops = x.unfold(2, CROP, 1).unfold(3, CROP, 1)  # (N, 3, top, left, 32, 32)
    crops = crops.permute(0, 2, 3, 1, 4, 5)  # (N, top, left, 3, 32, 32)
    both = torch.stack([crops, crops.flip(-1)], dim=3)  # (N, top, left, flip, 3, 32, 32)
    return both.reshape(-1, 3, CROP, CROP).contiguous()


__all__ = [
    "CROP",
    "IDENTITY_VIEW",
    "NUM_VIEWS",
    "OFFSETS",
    "PADDING",
    "render_all_views",
    "render_views",
    "transform_spec",
    "view_params",
]
