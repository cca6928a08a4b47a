"""The one validation layer: path arguments take str or os.PathLike and expand `~` (no folder named `~`)."""

import os
import re
from pathlib import Path

import pytest

from cmkd_lightning.utilities.validation import check_int, check_optional_path, check_path


class _Custom(os.PathLike):
    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_check_path_expands_home_for_str_pathlike_and_path(home):
    assert check_path("~/figs", "dirpath") == home / "figs"
    assert check_path(Path("~/figs"), "dirpath") == home / "figs"
    assert check_path(_Custom("~/figs"), "dirpath") == home / "figs"
    assert check_optional_path(None, "dirpath") is None


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (3, TypeError, "Expected `dirpath` to be a str or os.PathLike, but got int 3."),
        ("", ValueError, "Expected `dirpath` to be a non-empty path, but got ''."),
        (b"x", TypeError, "Expected `dirpath` to be a str or os.PathLike, but got bytes b'x'."),
    ],
)
def test_check_path_errors(value, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check_path(value, "dirpath")


def test_check_int_names_the_bounds_in_type_and_value_errors():
    with pytest.raises(TypeError, match=re.escape("Expected `k` to be an int in [1, 4], but got float 2.0.")):
        check_int(2.0, "k", minimum=1, maximum=4)
    with pytest.raises(ValueError, match=re.escape("Expected `k` to be an int >= 1, but got 0.")):
        check_int(0, "k", minimum=1)


def test_callbacks_and_data_modules_write_under_home_not_a_folder_named_tilde(home):
    from cmkd_lightning.callbacks import CorrelationMonitor, PublishCheckpoint, TrainingCost
    from datamodules import CIFAR100DataModule

    assert TrainingCost(dirpath="~/figs").dirpath == home / "figs"
    assert PublishCheckpoint(_Custom("~/ckpt/last.ckpt")).link == home / "ckpt" / "last.ckpt"
    assert CIFAR100DataModule(data_dir="~/data", synthetic=True).data_dir == home / "data"
    assert CorrelationMonitor() is not None
    assert not (Path.cwd() / "~").exists()


def test_figure_callback_dirpath_expands_home(home):
    pytest.importorskip("matplotlib")
    from cmkd_lightning.callbacks import EmbeddingProjection, LogitCorrelationHeatmap

    assert LogitCorrelationHeatmap(dirpath="~/figs").dirpath == home / "figs"
    assert EmbeddingProjection(dirpath=_Custom("~/figs")).dirpath == home / "figs"


def test_checkpoint_loader_expands_home(home):
    import torch

    from cmkd_lightning.checkpoint import load_state_dict_file

    home.mkdir()
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, home / "w.pth")
    assert list(load_state_dict_file("~/w.pth")) == ["fc.weight"]
