"""What a run shows besides its own output: only messages a person can act on (W&B, Lightning tips, user scripts)."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest
from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from cmkd_lightning.cli.app import _make_wandb_dirs
from cmkd_lightning.cli.wandb_mode import ensure_wandb_mode
from cmkd_lightning.utilities.runtime import drop_lightning_tips, quiet_lightning, show_lightning_tips

ANONYMOUS = "wandb: WARNING The anonymous setting has no effect and will be removed in a future version.\n"
LITLOGGER = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://pypi.org/project/"
    "litlogger/) to enable LitLogger, which logs metrics and artifacts automatically to the Lightning Experiments "
    "platform."
)
LITMODELS = (
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](https://pypi.org/project/litmodels/)"
    " to enable LitModelCheckpoint, which syncs automatically with the Lightning model registry."
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_lightning_drops_exactly_wandbs_anonymous_line(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    with quiet_lightning():
        assert sys.stderr is not stream and sys.stderr.isatty()  # the wrapper answers as the real stream
        sys.stderr.write(ANONYMOUS)
        sys.stderr.write("wandb: WARNING something a person must read\n")
        # on a terminal wandb colours its prefix; the line is still recognised
        sys.stderr.write("\x1b[34m\x1b[1mwandb\x1b[0m: \x1b[33mWARNING\x1b[0m " + ANONYMOUS.split("WARNING ", 1)[1])
        sys.stderr.write("kept\n" + ANONYMOUS + "kept too\n")
        print("a progress bar\r", end="", file=sys.stderr)
    assert sys.stderr is stream
    sys.stderr.write(ANONYMOUS)  # outside the block: untouched
    assert stream.getvalue() == (
        "wandb: WARNING something a person must read\nkept\nkept too\na progress bar\r" + ANONYMOUS
    )


def test_lightning_tips_are_dropped_from_python_use_too(caplog):
    # The filter is installed when cmkd_lightning is imported (a user's script never enters quiet_lightning).
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info(LITLOGGER)
        rank_zero_info(LITMODELS)
        rank_zero_info("GPU available: False, used: False")
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["GPU available: False, used: False"]
    caplog.clear()
    show_lightning_tips()
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
            rank_zero_info(LITLOGGER)
        assert [r.getMessage() for r in caplog.records] == [LITLOGGER]
    finally:
        drop_lightning_tips()
        drop_lightning_tips()  # idempotent
    filters = logging.getLogger("lightning.pytorch.utilities.rank_zero").filters
    assert sum(type(f).__name__ == "_DropNoise" for f in filters) == 1


def test_a_cmkd_run_with_wandb_is_quiet_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_QUIET", raising=False)
    ensure_wandb_mode(uses_wandb=False)
    assert "WANDB_QUIET" not in os.environ
    ensure_wandb_mode(uses_wandb=True)
    assert os.environ["WANDB_QUIET"] == "true"
    monkeypatch.setenv("WANDB_QUIET", "false")
    ensure_wandb_mode(uses_wandb=True)
    assert os.environ["WANDB_QUIET"] == "false"


@pytest.mark.parametrize("key", ["save_dir", "dir"])
def test_wandb_folders_exist_before_wandb_starts(tmp_path, key):
    folder = tmp_path / "runs" / "deeper"
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(**{key: str(folder)}))
    other = Namespace(
        class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=str(tmp_path / "x"))
    )
    _make_wandb_dirs([logger, other])
    assert folder.is_dir() and not (tmp_path / "x").exists()
    _make_wandb_dirs(logger)  # a single logger, already there
    _make_wandb_dirs(None)
