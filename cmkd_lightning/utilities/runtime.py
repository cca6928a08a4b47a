"""Process settings for runs: the CPU thread count, and silencing Lightning's and W&B's known noise.

Used by the ``cmkd`` command, ``cmkd-quickstart`` and the example scripts. Three scopes, each for exactly the
messages listed here (every other warning and log line shows):

- at import (so also in a user's own script): a logging filter that drops Lightning's two product tips
  ("💡 Tip: For seamless cloud ..." about litlogger / litmodels) from its ``rank_zero`` logger;
- :class:`QuietStart` (mixed into :class:`~cmkd_lightning.DistillationModule`): Lightning's LeafSpec deprecation
  and "Found N module(s) in eval mode" (the frozen teacher), while Lightning prepares a run;
- :func:`quiet_lightning`: everything above plus Lightning's advice that does not apply to cmkd's metrics, and
  W&B's "anonymous setting has no effect" warning (Lightning's ``WandbLogger`` always passes ``anonymous``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import torch
from lightning.pytorch.trainer.states import TrainerFn

from cmkd_lightning.errors import InvalidArgumentError

CPU_THREADS_ENV = "CMKD_CPU_THREADS"
DEFAULT_CPU_THREADS = 1

# Lightning's product tips (litlogger at Trainer construction, litmodels when a fit starts without ModelCheckpoint).
_NOISE_LOGS = (re.compile(r"^💡 Tip: For seamless cloud (logging|uploads)"),)
# Lightning's WandbLogger passes `anonymous` to wandb.init whatever the user sets, and wandb >= 0.23 warns about any
# value; a full line as wandb prints it (its `termwarn` writes one line per call to sys.stderr).
_NOISE_STDERR = ("wandb: WARNING The anonymous setting has no effect and will be removed in a future version.\n",)
# Lightning's own pytree helper under torch >= 2.10; nothing a user can change.
_LEAFSPEC = r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"
# DistillationModule keeps its frozen teacher in eval mode on purpose.
_EVAL_MODE = r"Found \d+ module\(s\) in eval mode at the start of training.*"
_NOISE_WARNINGS = (
    # A mid-epoch resume: the Preemption callback makes the repository's samplers skip the batches already trained
    # (and warns itself where a sampler cannot), so Lightning's generic advice does not apply.
    r"You're resuming from a checkpoint that ended before the epoch ended.*",
    _LEAFSPEC,
    # DistillationModule all-reduces its epoch metrics itself (torchmetrics) and logs the reduced values, so
    # Lightning's advice to add `sync_dist=True` does not apply to its `train/`, `val/`, `test/` keys.
    r"It is recommended to use `self\.log\('(train|val|test)/.*', \.\.\., sync_dist=True\)`.*",
    _EVAL_MODE,
    # A module with a teacher cache attaches the cached logits in its own batch hook, on purpose.
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
)


def cpu_threads(value: int | str | None = None) -> int:
    """The torch thread count for a CPU run: ``value``, else ``$CMKD_CPU_THREADS``, else 1.

    ``0`` means "leave torch's default" (one thread per core).

    Args:
        value: an explicit count (e.g. from a command-line option), or ``None``.

    Returns:
        The count, an int >= 0.

    Example:
        >>> cpu_threads(2)
        2
    """
    source = "cpu_threads"
    if value is None:
        value = os.environ.get(CPU_THREADS_ENV)
        source = f"${CPU_THREADS_ENV}"
    if value is None or value == "":
        return DEFAULT_CPU_THREADS
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or isinstance(value, bool):
        raise InvalidArgumentError(
            f"Expected `{source}` to be an integer >= 0 (0: torch's default), but got {value!r}."
        )
    return count


def set_cpu_threads(value: int | str | None = None) -> int:
    """Set torch's intra-op thread count to :func:`cpu_threads` ``(value)`` unless it is 0; return the count used.

    The small models of the digits runs train 2-3x faster with one thread than with one per core on a 2-core
    machine (docs/RESULTS.md), because per-op threading overhead dominates their tiny kernels.

    Example:
        >>> n = set_cpu_threads(1)
        >>> torch.get_num_threads()
        1
    """
    count = cpu_threads(value)
    if count > 0:
        torch.set_num_threads(count)
    return torch.get_num_threads()


# Warnings Lightning gives every DistillationModule run between the `setup` hook and the start of the loop, from
# its own code (no hook of ours is on the stack): its pytree helper under torch >= 2.10, and the frozen teacher that
# stays in eval mode on purpose.
_START_NOISE = (_LEAFSPEC, _EVAL_MODE)


class QuietStart:
    """LightningModule hooks that hide Lightning's start-of-run noise (``_START_NOISE``) from Python use too.

    ``setup`` adds one ``ignore`` filter per message (``warnings.filterwarnings``, matched on the message only);
    the first of ``on_train_start``, ``on_validation_start`` (outside ``fit``), ``on_test_start``,
    ``on_predict_start`` and ``teardown`` removes exactly those filters again, so they live only while Lightning
    prepares the run; any other warning, and any filter the user sets, is untouched. (An exception before the loop
    starts reaches no module hook: the two filters then stay until the module's next ``setup``.)
    """

    trainer: Any

    def _quiet_start(self) -> None:
        self._quiet_stop()
        added = []
        for message in _START_NOISE:
            warnings.filterwarnings("ignore", message=message)
            added.append(warnings.filters[0])
        self._quiet_filters = added

    def _quiet_stop(self) -> None:
        for entry in getattr(self, "_quiet_filters", ()):
            with contextlib.suppress(ValueError):  # already gone (e.g. a `catch_warnings` block ended)
                warnings.filters.remove(entry)
        self._quiet_filters: list[Any] = []

    def setup(self, stage: str) -> None:
        """Add the filters (see the class docstring)."""
        self._quiet_start()
        super().setup(stage)  # type: ignore[misc]

    def on_train_start(self) -> None:
        """Remove the filters."""
        self._quiet_stop()
        super().on_train_start()  # type: ignore[misc]

    def on_validation_start(self) -> None:
        """Remove the filters, unless this is ``fit``'s sanity check (the loop starts after it)."""
        if self.trainer.state.fn != TrainerFn.FITTING:
            self._quiet_stop()
        super().on_validation_start()  # type: ignore[misc]

    def on_test_start(self) -> None:
        """Remove the filters."""
        self._quiet_stop()
        super().on_test_start()  # type: ignore[misc]

    def on_predict_start(self) -> None:
        """Remove the filters."""
        self._quiet_stop()
        super().on_predict_start()  # type: ignore[misc]

    def teardown(self, stage: str) -> None:
        """Remove the filters."""
        self._quiet_stop()
        super().teardown(stage)  # type: ignore[misc]


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in _NOISE_LOGS)


_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch")
_TIP_FILTER = _DropNoise()


def drop_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip: For seamless cloud ..." lines for the rest of the process (done on import).

    A :class:`logging.Filter` on Lightning's ``rank_zero`` logger matching those two messages only; idempotent.
    :func:`show_lightning_tips` removes it.
    """
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)


def show_lightning_tips() -> None:
    """Undo :func:`drop_lightning_tips`."""
    for name in _TIP_LOGGERS:
        logging.getLogger(name).removeFilter(_TIP_FILTER)


drop_lightning_tips()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes (wandb colours its prefix on a terminal)


class _DropLines:
    """A text stream that passes everything to ``stream`` except whole lines equal to one of ``lines``.

    A line is compared without its colour codes; the lines of ``lines`` end with a newline.
    """

    def __init__(self, stream: TextIO, lines: tuple[str, ...]) -> None:
        self._stream = stream
        self._lines = lines

    def write(self, text: str) -> int:
        if "wandb" in text:  # cheap test first: progress bars write here many times a second
            kept = [line for line in text.splitlines(keepends=True) if _ANSI.sub("", line).lstrip() not in self._lines]
            text = "".join(kept)
        return self._stream.write(text) if text else 0

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding, ...: the real stream's
        return getattr(self._stream, name)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, drop Lightning's tips, the warnings listed above and W&B's ``anonymous`` warning.

    Scoped: a logging filter on Lightning's loggers, a ``warnings.catch_warnings`` block and a ``sys.stderr`` that
    drops the one W&B line, all removed on exit. Every other warning and message still shows.

    Example:
        >>> with quiet_lightning():
        ...     pass
    """
    loggers = [logging.getLogger(name) for name in _TIP_LOGGERS]
    noise = _DropNoise()
    for logger in loggers:
        logger.addFilter(noise)
    stderr = sys.stderr
    wrapper = _DropLines(stderr, _NOISE_STDERR)
    sys.stderr = wrapper  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            for message in _NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        if sys.stderr is wrapper:  # unless someone else replaced it meanwhile
            sys.stderr = stderr
        for logger in loggers:
            logger.removeFilter(noise)
