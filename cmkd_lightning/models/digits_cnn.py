"""Small CNNs for the composed-digits quickstart data (1 x 8 x 8k images, 10^k classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cmkd_lightning.errors import InvalidArgumentError

DigitsHead = Literal["grid", "global", "factorised", "soft_or"]
_HEADS = ("grid", "global", "factorised", "soft_or")
_PER_POSITION = ("factorised", "soft_or")


class DigitsCNN(nn.Module):
    r"""A VGG-style CNN for composed digits, with one of three classifier heads.

    Conv-BN-ReLU stages (a 2x2 max-pool after every stage but the last), then the head:

    - ``"grid"`` (default): an adaptive average pool to a ``1 x num_digits`` grid, so the classifier sees which
      digit sits where ("37" is not "73"), then one linear layer over the ``num_digits`` feature columns.
    - ``"global"``: a global average pool to one feature vector, then one linear layer; where a digit sits is
      known only through the convolutions' padding.
    - ``"factorised"``: the ``1 x num_digits`` grid, then one 10-way digit classifier per position, and the
      class logit is the sum of its digits' scores,
      :math:`z_c = \sum_j s_j[d_j(c)]` with :math:`d_j(c)` the :math:`j`-th decimal digit of ``c`` (most
      significant first). Classes that share digits with the top class get logits close to it, so the logits
      have a long, structured tail and a small top z-score. Needs ``num_classes == 10 ** num_digits``.
    - ``"soft_or"``: the same per-position digit scores, combined by a log-sum-exp instead of a sum,
      :math:`z_c = \log \sum_j \exp s_j[d_j(c)]`: a class scores high when *any* of its digits is seen, so every
      class sharing a digit with the input lands close to the top class (a top z-score near 2, a flat softmax and
      a lower accuracy: a teacher whose logit tail carries little of the label). Needs
      ``num_classes == 10 ** num_digits``.

    Args:
        num_classes: number of output classes (``10 ** num_digits`` for composed digits).
        widths: channels of each conv stage; two convs per stage when ``double=True``.
        num_digits: digits composed side by side (the width of the pooled grid).
        in_channels: input channels (1 for the grayscale digits).
        double: two 3x3 convs per stage instead of one.
        head: ``"grid"``, ``"global"``, ``"factorised"`` or ``"soft_or"`` (above).

    Example:
        >>> net = DigitsCNN(num_classes=100, widths=(8, 16), num_digits=2, head="factorised")
        >>> tuple(net(torch.zeros(3, 1, 8, 16)).shape)
        (3, 100)
    """

    def __init__(
        self,
        num_classes: int = 100,
        widths: Sequence[int] = (32, 64, 128),
        num_digits: int = 2,
        in_channels: int = 1,
        double: bool = True,
        head: DigitsHead = "grid",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise InvalidArgumentError(f"Expected `num_classes` to be an integer >= 2, but got {num_classes!r}.")
        if not widths or any(int(w) < 1 for w in widths):
            raise InvalidArgumentError(
                f"Expected `widths` to be a non-empty list of positive integers, but got {widths!r}."
            )
        if isinstance(num_digits, bool) or not isinstance(num_digits, int) or num_digits < 1:
            raise InvalidArgumentError(f"Expected `num_digits` to be an integer >= 1, but got {num_digits!r}.")
        if head not in _HEADS:
            raise InvalidArgumentError(f"Expected `head` to be one of {_HEADS}, but got {head!r}.")
        if head in _PER_POSITION and num_classes != 10**num_digits:
            raise InvalidArgumentError(
                f"Expected `num_classes` to be 10 ** num_digits = {10**num_digits} for head={head!r}, "
                f"but got {num_classes}."
            )
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            for _ in range(2 if double else 1):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                c_in = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.head = head
        self.pool = nn.AdaptiveAvgPool2d((1, 1) if head == "global" else (1, num_digits))
        if head in _PER_POSITION:
            # one 10-way digit classifier per position: (num_digits, 10, c_in) weights
            self.fc = nn.Conv1d(c_in * num_digits, 10 * num_digits, 1, groups=num_digits)
            classes = torch.arange(num_classes)
            places = torch.tensor([10 ** (num_digits - 1 - j) for j in range(num_digits)])
            digits = (classes[None, :] // places[:, None]) % 10  # (num_digits, C)
            index = digits + 10 * torch.arange(num_digits)[:, None]  # into the flattened (num_digits * 10) scores
            self.register_buffer("digit_index", index, persistent=False)
        else:
            self.fc = nn.Linear(c_in * (1 if head == "global" else num_digits), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, in_channels, 8, 8 * num_digits)``."""
        pooled = self.pool(self.features(x))  # (N, c, 1, k) or (N, c, 1, 1)
        if self.head not in _PER_POSITION:
            return self.fc(pooled.flatten(1))
        n, c, _, k = pooled.shape
        columns = pooled.squeeze(2).transpose(1, 2).reshape(n, k * c, 1)  # position-major groups of c features
        scores = self.fc(columns).squeeze(-1)  # (N, k * 10): position j's digit scores at [10 j, 10 j + 10)
        per_digit = scores[:, self.digit_index]  # (N, num_digits, C): each class's digit scores
        return per_digit.sum(dim=1) if self.head == "factorised" else per_digit.logsumexp(dim=1)


def digits_teacher(num_classes: int = 100, num_digits: int = 2, **kwargs: object) -> DigitsCNN:
    """The quickstart teacher: widths (16, 32, 64), two convs per stage."""
    return DigitsCNN(num_classes, widths=(16, 32, 64), num_digits=num_digits, double=True, **kwargs)


def digits_student(num_classes: int = 100, num_digits: int = 2, **kwargs: object) -> DigitsCNN:
    """The quickstart student: widths (8, 16), one conv per stage."""
    return DigitsCNN(num_classes, widths=(8, 16), num_digits=num_digits, double=False, **kwargs)
