"""Section C's runners (benchmarks/lightning_overhead.py): the plain loop does the module's work, and the
step-interleaved and phases runners time what they say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import lightning_overhead as bench  # noqa: E402

from datamodules.composed_digits import ComposedDigitsDataModule  # noqa: E402

STEPS, WARMUP, BATCH = 6, 2, 16


@pytest.fixture(scope="module")
def loader() -> DataLoader:
    dm = ComposedDigitsDataModule(num_digits=2, train_size=STEPS * BATCH, val_size=16, test_size=16, batch_size=BATCH)
    dm.setup("fit")
    return DataLoader(dm.datasets["train"], batch_size=BATCH, shuffle=False)


@pytest.mark.parametrize("loss", ["KD", "CMKD"])
@pytest.mark.parametrize("bare", [False, True])
def test_the_plain_loop_and_lightning_train_the_same_weights(loader, loss, bare):
    # same seed, same batches, same optimiser and loss code: after the run the students agree, so the ratio
    # compares the same work (the module's guard and means change no number)
    alongside = bench._PlainAlongside(loss, loader, torch.device("cpu"))
    lightning = bench._BareModule(bench._module(loss)) if bare else bench._module(loss)
    bench._trainer(torch.device("cpu"), STEPS, [alongside]).fit(lightning, loader)
    student = (lightning.module if bare else lightning).student
    for (name, got), expected in zip(
        student.state_dict().items(), alongside.plain.module.student.state_dict().values()
    ):
        torch.testing.assert_close(got, expected, msg=name)
    # every Lightning step after the first and every plain step is timed, each once
    assert len(alongside.lightning_s) == STEPS - 1 and len(alongside.plain_s) == STEPS
    assert all(t > 0 for t in alongside.lightning_s + alongside.plain_s)


def test_the_phases_add_up_to_the_step(loader):
    ms = bench._phases("KD", loader, WARMUP, STEPS, torch.device("cpu"))
    for key in ("training_step", "backward", "optimizer_step", "plain_fetch", "plain_forward", "plain_backward"):
        assert ms[key] > 0, key
    # the optimiser step runs the closure: forward and backward happen inside it
    assert ms["optimizer_step"] > ms["training_step"] + ms["backward"]
    assert ms["lightning_step"] == pytest.approx(ms["optimizer_step"] + ms["plain_fetch"] + ms["loop"])
