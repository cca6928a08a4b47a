"""cmkd-lightning: knowledge distillation for PyTorch Lightning built around CMKD."""

__version__ = "0.1.0"
