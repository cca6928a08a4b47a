"""Every message and file a callback writes counts epochs as a person does: from 1, out of max_epochs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.trainer.states import TrainerFn

from cmkd_lightning.callbacks._figures import epoch_number, running_epoch


@pytest.mark.parametrize(
    ("current_epoch", "max_epochs", "expected"),
    [(0, 6, "epoch 1 of 6"), (5, 6, "epoch 6 of 6"), (2, -1, "epoch 3"), (2, None, "epoch 3")],
)
def test_running_epoch(current_epoch, max_epochs, expected):
    assert running_epoch(SimpleNamespace(current_epoch=current_epoch, max_epochs=max_epochs)) == expected


def test_epoch_number_is_the_running_epoch_in_fit_and_the_epochs_trained_after():
    fitting = SimpleNamespace(current_epoch=5, state=SimpleNamespace(fn=TrainerFn.FITTING))
    testing = SimpleNamespace(current_epoch=6, state=SimpleNamespace(fn=TrainerFn.TESTING))
    assert epoch_number(fitting) == 6 == epoch_number(testing)
