"""Every datamodule instantiates from LightningCLI arguments and links `data.num_classes` -> `model.num_classes`."""

import sys

import lightning as L
import pytest
from lightning.pytorch.cli import LightningCLI

from datamodules import CIFAR100CDataModule, CIFAR100DataModule, ComposedDigitsDataModule, ImageNetDataModule


class _Model(L.LightningModule):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes


class _LinkingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


@pytest.mark.parametrize(
    ("datamodule_class", "args", "num_classes"),
    [
        (ComposedDigitsDataModule, ["--data.num_digits=3"], 1000),
        (CIFAR100DataModule, ["--data.data_dir=DIR", "--data.download=false"], 100),
        (ImageNetDataModule, ["--data.data_dir=DIR", "--data.num_classes=5", "--data.image_size=64"], 5),
        (
            CIFAR100CDataModule,
            ["--data.data_dir=DIR", "--data.corruptions=[fog, snow]", "--data.severities=[1, 5]"],
            100,
        ),
    ],
)
def test_cli_instantiates_and_links_num_classes(tmp_path, monkeypatch, datamodule_class, args, num_classes):
    monkeypatch.setattr(sys, "argv", ["cmkd"])  # LightningCLI warns when pytest's own arguments are there
    args = [a.replace("DIR", str(tmp_path)) for a in args]
    cli = _LinkingCLI(
        _Model, datamodule_class, run=False, args=[*args, "--trainer.logger=false"], seed_everything_default=False
    )
    assert isinstance(cli.datamodule, datamodule_class)
    assert cli.model.num_classes == cli.datamodule.num_classes == num_classes
    if datamodule_class is CIFAR100CDataModule:
        assert cli.datamodule.test_names == ["fog/s1", "fog/s5", "snow/s1", "snow/s5"]
