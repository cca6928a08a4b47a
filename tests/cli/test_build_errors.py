"""A class of the config that cannot be built is named by its config key; the message is the error's own.

The key is found from the config's own ``class_path`` entries and the traceback's code objects, the message by the
error's type (the library's CMKDError first, else the first error that is not jsonargparse's wrapper).
"""

from __future__ import annotations

import pytest

from tests.reliability._cli import DIGITS, _cli_error

NO_TEACHER = "--model.init_args.teacher_checkpoint=null"


@pytest.mark.parametrize(
    ("override", "where", "message"),
    [
        (
            "--model.init_args.losses.init_args.temperature=-1",
            "`model.init_args.losses[0]` (cmkd_lightning.losses.cmkd.CMKDLoss)",
            "InvalidArgumentError: Expected `temperature` to be a finite number > 0, but got -1.0.",
        ),
        (
            "--data.init_args.num_digits=0",
            "`data` (datamodules.composed_digits.ComposedDigitsDataModule)",
            "InvalidArgumentError: Expected `num_digits` to be an int in [1, 4], but got 0.",
        ),
        (
            "--model.init_args.student=resnet9999",
            "`model` (cmkd_lightning.module.distillation.DistillationModule)",
            "InvalidArgumentError: Expected `name` to be one of ['resnet8',",
        ),
    ],
)
def test_a_library_error_names_the_config_key_and_keeps_its_message(tmp_path, monkeypatch, capsys, override, where, message):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "cmkd.yaml"), NO_TEACHER, override])
    assert code == 1
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"cmkd: error while building {where} from {DIGITS / 'cmkd.yaml'};")
    assert lines[1].startswith(message)


def test_a_users_own_class_error_is_shown_as_raised(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "user.yaml"
    config.write_text(
        "model:\n  init_args:\n    losses:\n      - class_path: tests.cli._user_classes.RefusingLoss\n"
        "        init_args: {temperature: 2.0}\n"
    )
    code, lines = _cli_error(capsys, ["fit", "-c", str(DIGITS / "cmkd.yaml"), "-c", str(config), NO_TEACHER])
    assert code == 1
    assert lines[0].startswith("cmkd: error while building `model.init_args.losses[0]` (tests.cli._user_classes.RefusingLoss)")
    assert lines[1] == "ValueError: RefusingLoss: the user's own check refused temperature=2.0."
