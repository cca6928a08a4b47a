"""CMKD's entropy input (Eq. 14), which the paper leaves open: the loss's probabilities or the teacher's softmax."""

import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from cmkd_lightning.functional import cmkd_loss
from cmkd_lightning.functional.cmkd import cmkd_terms, teacher_stats
from cmkd_lightning.functional.cmkd_fused import cmkd_fused_terms, fast_teacher_stats
from cmkd_lightning.losses import CMKDLoss


def _logits(n: int = 16, c: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = 6 * torch.randn(n, c, generator=g, dtype=torch.float64)
    return teacher + 3 * torch.randn(n, c, generator=g, dtype=torch.float64), teacher


@pytest.mark.parametrize("stats_fn", [teacher_stats, fast_teacher_stats])
def test_teacher_source_is_the_entropy_of_the_raw_softmax(stats_fn):
    _, zt = _logits()
    stats = stats_fn(zt, temperature=4.0, entropy_source="teacher")
    expected = scipy_entropy(torch.softmax(zt, dim=1).numpy(), axis=1)
    torch.testing.assert_close(stats.entropy, torch.from_numpy(expected), rtol=1e-10, atol=1e-12)
    loss_side = stats_fn(zt, temperature=4.0, entropy_source="loss")
    torch.testing.assert_close(stats.probs, loss_side.probs)  # only the entropy changes
    zscored = (zt - zt.mean(1, keepdim=True)) / (zt.std(1, keepdim=True) + 1e-7)
    expected = scipy_entropy(torch.softmax(zscored / 4.0, dim=1).numpy(), axis=1)
    torch.testing.assert_close(loss_side.entropy, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)


def test_the_two_sources_split_a_batch_differently_and_change_the_loss():
    zs, zt = _logits(n=64, c=100, seed=1)
    loss_split = cmkd_terms(zs, zt, entropy_source="loss").hard
    teacher_split = cmkd_terms(zs, zt, entropy_source="teacher").hard
    assert (loss_split != teacher_split).any()
    assert not torch.isclose(cmkd_loss(zs, zt, entropy_source="loss"), cmkd_loss(zs, zt, entropy_source="teacher"))


@pytest.mark.parametrize("source", ["loss", "teacher"])
def test_fused_and_general_paths_agree_for_each_source(source):
    zs, zt = _logits(n=12, c=30, seed=2)
    zs_general, zs_fused = zs.clone().requires_grad_(), zs.clone().requires_grad_()
    general = cmkd_terms(zs_general, zt, entropy_source=source, rank_backend="torch")
    fused = cmkd_fused_terms(zs_fused, zt, entropy_source=source, rank_backend="torch")
    assert torch.equal(general.hard, fused.hard)
    torch.testing.assert_close(fused.entropy, general.entropy, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.loss, general.loss, rtol=1e-10, atol=1e-12)
    general.loss.sum().backward()
    fused.loss.sum().backward()
    torch.testing.assert_close(zs_fused.grad, zs_general.grad, rtol=1e-8, atol=1e-12)


def test_the_loss_module_passes_the_source_and_records_it():
    zs, zt = _logits(n=32, c=40, seed=3)
    loss = CMKDLoss(entropy_source="teacher")
    assert "entropy_source='teacher'" in repr(loss)
    assert loss.to_config()["init_args"]["entropy_source"] == "teacher"
    expected = cmkd_terms(zs.float(), zt.float(), entropy_source="teacher").entropy.mean()
    torch.testing.assert_close(loss(zs.float(), zt.float())["teacher_entropy"], expected)


def test_an_unknown_source_is_refused_naming_the_argument():
    zs, zt = _logits()
    with pytest.raises(ValueError, match=r"Expected `entropy_source` to be one of \('loss', 'teacher'\), but got 'raw'"):
        CMKDLoss(entropy_source="raw")
    with pytest.raises(ValueError, match="entropy_source"):
        cmkd_loss(zs, zt, entropy_source="raw")
    with pytest.raises(ValueError, match="entropy_source"):
        cmkd_fused_terms(zs, zt, entropy_source="raw")


def test_a_beta_float32_cannot_hold_stays_exact_in_float64():
    zs, zt = _logits(n=8, c=20, seed=4)
    terms = cmkd_terms(zs, zt, beta=0.3, gamma=0.1, pearson_scale="paper")
    manual = torch.where(terms.hard, 0.3 * terms.pearson + 0.1 * terms.spearman, 0.1 * terms.pearson + 0.3 * terms.spearman)
    torch.testing.assert_close(terms.loss, manual, rtol=1e-15, atol=0.0)
