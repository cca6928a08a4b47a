"""A stable path to the latest finished run's checkpoint, while each run keeps its own files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from cmkd_lightning.errors import ArgumentTypeError, InvalidArgumentError, OutputExistsError
from cmkd_lightning.utilities.validation import check_path, check_str

__all__ = ["PublishCheckpoint", "point_link"]


def point_link(link: Path, target: Path, *, overwrite: bool = False) -> None:
    """Make ``link`` a relative symbolic link to ``target``, replacing an older link atomically.

    A regular file at ``link`` (e.g. a checkpoint written there by hand) is never replaced unless ``overwrite``.
    Where symbolic links are not allowed the target is copied instead (also atomically).

    Raises:
        OutputExistsError: (a ``FileExistsError``) if ``link`` is a regular file or a folder and ``overwrite`` is False.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "run-1").mkdir(), (root / "run-1" / "last.ckpt").write_bytes(b"1")
        >>> point_link(root / "teacher.ckpt", root / "run-1" / "last.ckpt")
        >>> os.readlink(root / "teacher.ckpt")
        'run-1/last.ckpt'
    """
    link.parent.mkdir(parents=True, exist_ok=True)
    if (link.exists() or link.is_symlink()) and not link.is_symlink() and not overwrite:
        raise OutputExistsError(
            f"Expected '{link}' to be free or a link to an earlier run's checkpoint, but it is a "
            f"{'folder' if link.is_dir() else 'regular file'}; it was not replaced. Move it away, or pass "
            "`overwrite=True` to PublishCheckpoint."
        )
    temporary = link.with_name(f".{link.name}.link-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), temporary)
    except OSError:
        shutil.copyfile(target, temporary)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(temporary, link)


class PublishCheckpoint(Callback):
    """At the end of training, point a fixed path (``link``) at this run's last (or best) checkpoint.

    Each run writes its checkpoints into its own folder (the ModelCheckpoint's, by default under the logger's run
    directory), so two runs started together never overwrite each other; ``link`` then names the checkpoint of the
    run that finished last, e.g. ``runs/digits-teacher/teacher.ckpt`` for the student configs to read. Only a
    link is ever replaced; a regular file at ``link`` is refused unless ``overwrite``.

    Args:
        link: the stable path to create or update.
        which: ``"last"`` (the ModelCheckpoint's ``last_model_path``) or ``"best"`` (``best_model_path``).
        overwrite: replace a regular file at ``link``.

    Example:
        >>> PublishCheckpoint("runs/digits-teacher/teacher.ckpt").which
        'last'
    """

    def __init__(self, link: str | Path, which: Literal["last", "best"] = "last", overwrite: bool = False) -> None:
        self.link = check_path(link, "link")
        self.which = check_str(which, "which")
        if self.which not in ("last", "best"):
            raise InvalidArgumentError(f"Expected `which` to be 'last' or 'best', but got {which!r}.")
        if not isinstance(overwrite, bool):
            raise ArgumentTypeError(f"Expected `overwrite` to be a bool, but got {type(overwrite).__name__}.")
        self.overwrite = overwrite

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A regular file or a folder at `link` would only be refused after every epoch has run: refuse it now.
        link = self.link
        if not self.overwrite and (link.exists() or link.is_symlink()) and not link.is_symlink():
            kind = "folder" if link.is_dir() else "regular file"
            raise OutputExistsError(
                f"Expected PublishCheckpoint's `link` '{link}' to be free or a link to an earlier run's checkpoint, "
                f"but it is a {kind}; nothing was trained. Move it away, or pass `overwrite=True` to "
                "PublishCheckpoint."
            )

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        paths = [c.last_model_path if self.which == "last" else c.best_model_path for c in checkpoints]
        source = next((Path(p) for p in paths if p), None)
        if source is None or not source.is_file():
            rank_zero_info(f"PublishCheckpoint: no {self.which} checkpoint was saved, so '{self.link}' is unchanged.")
            return
        point_link(self.link, source, overwrite=self.overwrite)
        rank_zero_info(f"PublishCheckpoint: '{self.link}' now points to {source}")
