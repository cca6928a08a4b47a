"""Fixtures of the experiment-tool tests: the tools' own code paths with Lightning's training loop stubbed out."""

from __future__ import annotations

from typing import Any

import pytest

from cmkd_lightning.experiments import training


class RecordingTrainer:
    """Stands in for ``lightning.Trainer``: records the arguments and every module ``fit`` gets, trains nothing."""

    def __init__(self, calls: list[dict[str, Any]], **kwargs: Any) -> None:
        self.calls = calls
        self.kwargs = kwargs

    def fit(self, module: Any, datamodule: Any) -> None:
        self.calls.append({"module": module, **self.kwargs})


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the tools' shared ``make_trainer`` by :class:`RecordingTrainer`; returns the list of fit calls.

    Everything else (methods table, module construction, evaluation, statistics, files) runs for real, in a
    second or two instead of minutes.
    """
    calls: list[dict[str, Any]] = []

    def make_trainer(epochs: int, out: Any, **kwargs: Any) -> RecordingTrainer:
        return RecordingTrainer(calls, epochs=epochs, out=out, **kwargs)

    monkeypatch.setattr(training, "make_trainer", make_trainer)
    return calls
