"""Small parameter-free operations shared by the ShuffleNet definitions."""

from __future__ import annotations

from torch import Tensor

from cmkd_lightning.errors import InvalidArgumentError


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``(N, g·c, H, W) -> (N, c·g, H, W)``.

    Channel ``i·c + j`` of the input moves to position ``j·g + i``, so that the next grouped convolution sees
    channels from every group.

    Paper: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    CVPR 2018 (Sec. 3.1).

    Args:
        x: feature map of shape ``(N, C, H, W)`` with ``C`` divisible by ``groups``.
        groups: number of groups.

    Returns:
        Tensor of the same shape with shuffled channels.

    Example:
        >>> import torch
        >>> channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 2).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    n, c, h, w = x.shape
    if c % groups != 0:
        raise InvalidArgumentError(f"Expected the channel count to be divisible by `groups`={groups}, but got {c}.")
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
