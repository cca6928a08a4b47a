"""A zoo name in a YAML config builds the zoo's model, never a same-named class of another package.

jsonargparse resolves a bare class name given for an ``nn.Module`` argument among every imported ``nn.Module``
subclass: with ``student: nn.Module | str`` the string ``MobileNetV2`` became ``torchvision.models.MobileNetV2``
(ImageNet width, 1000 classes). The module signatures therefore put ``str`` first (a union is tried in order), and
these tests pin that through the real ``cmkd`` CLI, from a YAML file and from the command line.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import jsonargparse
import pytest
import torch
import torchvision.models  # noqa: F401  (its MobileNetV2 / ShuffleNetV2 / ResNet are candidates for the lookup)
from torch import nn

from cmkd_lightning import DistillationModule, TeacherModule
from cmkd_lightning.cli import DistillationCLI, build_cli
from cmkd_lightning.models import MobileNetV1, MobileNetV2Cifar, ShuffleNetV1, ShuffleNetV2

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits"
SMALL = ["--data.init_args.train_size=64", "--data.init_args.val_size=32", "--data.init_args.test_size=32"]


def _cli(args: list[str]) -> DistillationCLI:
    with torch.device("meta"):  # every constructor runs, no weights are allocated
        return build_cli(args, run=False, save_config_callback=None)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmkd"])  # LightningCLI warns about pytest's own arguments otherwise
    monkeypatch.chdir(tmp_path)
    return tmp_path


ZOO = [
    ("MobileNetV2", MobileNetV2Cifar),
    ("mobilenetv2", MobileNetV2Cifar),
    ("ShuffleV1", ShuffleNetV1),
    ("ShuffleV2", ShuffleNetV2),
    ("MobileNetV1", MobileNetV1),
    ("resnet18", torchvision.models.ResNet),
]


@pytest.mark.parametrize(("name", "cls"), ZOO)
def test_student_name_in_a_yaml_file_is_the_zoo_model(name, cls, cli_env):
    config = cli_env / "student.yaml"
    config.write_text(f"model:\n  init_args:\n    student: {name}\n    teacher: {name}\n    teacher_checkpoint: null\n")
    cli = _cli(["-c", str(DIGITS / "cmkd.yaml"), "-c", str(config), "--trainer.logger=false", *SMALL])
    for network in (cli.model.student, cli.model.teacher):
        assert type(network) is cls, (name, type(network))
    assert cli.model.num_classes == 100  # the data module's class count, linked by the CLI


def test_student_name_on_the_command_line_is_the_zoo_model(cli_env):
    cli = _cli(
        [
            "-c",
            str(DIGITS / "cmkd.yaml"),
            "--model.init_args.student=MobileNetV2",
            "--model.init_args.teacher_checkpoint=null",
            "--trainer.logger=false",
            *SMALL,
        ]
    )
    assert type(cli.model.student) is MobileNetV2Cifar
    assert cli.config.model.init_args.student == "MobileNetV2"  # kept as the string the user wrote


def test_teacher_module_model_name_is_the_zoo_model(cli_env):
    cli = _cli(["-c", str(DIGITS / "teacher.yaml"), "--model.init_args.model=MobileNetV2", "--trainer.logger=false"])
    assert isinstance(cli.model, TeacherModule)
    assert type(cli.model.student) is MobileNetV2Cifar


@pytest.mark.parametrize(
    ("cls", "argument"), [(DistillationModule, "student"), (DistillationModule, "teacher"), (TeacherModule, "model")]
)
def test_network_arguments_try_str_first(cls, argument):
    # The cause, pinned at the signature: a union is tried in order, so `str` must come before `nn.Module`.
    hint = typing.get_type_hints(cls.__init__)[argument]
    assert typing.get_args(hint)[:2] == (str, nn.Module), hint


def test_class_lookup_is_what_str_first_prevents():
    # In a plain jsonargparse parser the other order turns the zoo name into torchvision's class.
    for hint, expected in ((nn.Module | str, "torchvision.models.MobileNetV2"), (str | nn.Module, "MobileNetV2")):
        parser = jsonargparse.ArgumentParser(exit_on_error=False)
        parser.add_argument("--student", type=hint)
        value = parser.parse_args(["--student=MobileNetV2"]).student
        assert (value if isinstance(value, str) else value.class_path) == expected
