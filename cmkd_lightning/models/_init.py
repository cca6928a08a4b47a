"""Weight initialisation shared by the CIFAR zoo (the scheme the RepDistiller teachers were trained with)."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, *, linear_std: float | None = None) -> None:
    r"""Initialise convolutions, batch norms and (optionally) linear layers in place.

    Convolutions get He initialisation in fan-out mode, :math:`w \sim \mathcal{N}(0, 2 / (k_h k_w C_{out}))`,
    and a zero bias; batch norms get weight 1 and bias 0. With ``linear_std`` set, linear layers get
    :math:`\mathcal{N}(0, \sigma^2)` weights and a zero bias; otherwise PyTorch's default is kept.

    Paper: He et al., "Delving Deep into Rectifiers", ICCV 2015.

    Args:
        model: module whose submodules are initialised.
        linear_std: standard deviation for linear weights, or ``None`` to keep PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
