"""The check_finite guard: one read on finite steps, the stage/step/term named otherwise."""

import pytest
import torch

from cmkd_lightning.errors import NonFiniteError
from cmkd_lightning.module.guard import raise_if_not_finite


def _terms(**overrides):
    terms = {"loss": torch.tensor(1.5), "ce": torch.tensor(0.5), "cmkd/loss": torch.tensor(1.0)}
    terms.update(overrides)
    return terms


def test_finite_steps_pass():
    raise_if_not_finite(_terms(), "train", torch.randn(4, 10), "train global step 3 (epoch 1)")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_term_is_named(bad):
    with pytest.raises(NonFiniteError, match=r"Non-finite loss at train global step 3 \(epoch 1\): train/cmkd/loss is"):
        raise_if_not_finite(
            _terms(**{"cmkd/loss": torch.tensor(bad)}), "train", torch.randn(4, 10), "train global step 3 (epoch 1)"
        )


def test_non_finite_student_logits_are_named_before_the_loss():
    logits = torch.randn(4, 10)
    logits[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="Non-finite student logits at val batch 0"):
        raise_if_not_finite(_terms(loss=torch.tensor(float("nan"))), "val", logits, "val batch 0")


def test_a_finite_float64_term_beyond_float32_range_is_not_an_error():
    # the fast check stacks the terms in float32, where 1e300 overflows; the slow check must not call it NaN/Inf
    raise_if_not_finite(
        _terms(extra=torch.tensor(1e300, dtype=torch.float64)), "train", torch.randn(4, 10), "train global step 0"
    )
