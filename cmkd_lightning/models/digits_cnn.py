"""Small CNNs for the composed-digits quickstart data (1 x 8 x 8k images, 10^k classes)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """A VGG-style CNN whose head keeps one feature column per composed digit.

    Conv-BN-ReLU stages (a 2x2 max-pool after every stage but the last), then an adaptive average pool to a
    ``1 x num_digits`` grid, so the classifier sees which digit sits where ("37" is not "73"), then ``fc``.

    Args:
        num_classes: number of output classes (``10 ** num_digits`` for composed digits).
        widths: channels of each conv stage; two convs per stage when ``double=True``.
        num_digits: digits composed side by side (the width of the pooled grid).
        in_channels: input channels (1 for the grayscale digits).
        double: two 3x3 convs per stage instead of one.
    """

    def __init__(
        self,
        num_classes: int = 100,
        widths: Sequence[int] = (32, 64, 128),
        num_digits: int = 2,
        in_channels: int = 1,
        double: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Expected `num_classes` to be an integer >= 2, but got {num_classes!r}.")
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"Expected `widths` to be a non-empty list of positive integers, but got {widths!r}.")
        if isinstance(num_digits, bool) or not isinstance(num_digits, int) or num_digits < 1:
            raise ValueError(f"Expected `num_digits` to be an integer >= 1, but got {num_digits!r}.")
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
        self.pool = nn.AdaptiveAvgPool2d((1, num_digits))
        self.fc = nn.Linear(c_in * num_digits, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, in_channels, 8, 8 * num_digits)``."""
        return self.fc(self.pool(self.features(x)).flatten(1))


def digits_teacher(num_classes: int = 100, num_digits: int = 2, **kwargs: object) -> DigitsCNN:
    """The quickstart teacher: widths (16, 32, 64), two convs per stage."""
    return DigitsCNN(num_classes, widths=(16, 32, 64), num_digits=num_digits, double=True, **kwargs)


def digits_student(num_classes: int = 100, num_digits: int = 2, **kwargs: object) -> DigitsCNN:
    """The quickstart student: widths (8, 16), one conv per stage."""
    return DigitsCNN(num_classes, widths=(8, 16), num_digits=num_digits, double=False, **kwargs)
