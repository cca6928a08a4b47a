"""The check_finite guard: one read on finite steps, the stage/step/term named otherwise."""

import pytest
import torch

from cmkd_lightning.errors import NonFiniteError
from cmkd_lightning.module.guard import all_finite, raise_if_not_finite, stack_terms


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


@pytest.mark.parametrize(
    ("term", "logit"),
    [
        (float("nan"), 0.0),
        (float("inf"), 0.0),
        (0.0, float("nan")),
        (0.0, -float("inf")),
        (float("inf"), -float("inf")),
    ],
)
def test_the_one_read_check_sees_any_nan_or_inf(term, logit):
    logits = torch.randn(4, 10)
    logits[2, 3] = logit
    finite = all_finite(stack_terms(_terms(**{"cmkd/loss": torch.tensor(term)})), logits)
    assert finite == (term == 0.0 and logit == 0.0)


def test_half_precision_logits_are_summed_in_float32():
    # 128 x 100 logits of 10 sum to 128,000: beyond float16's range (65,504), within float32's
    logits = torch.full((128, 100), 10.0, dtype=torch.float16)
    assert all_finite(stack_terms(_terms()), logits)


def test_an_overflowing_sum_of_finite_logits_is_not_an_error():
    logits = torch.full((4, 10), 3e38)  # each finite in float32; their sum is not
    assert not all_finite(stack_terms(_terms()), logits)
    raise_if_not_finite(_terms(), "train", logits, "train global step 0")  # the slow check finds nothing
