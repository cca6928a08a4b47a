"""CMKDLoss's presets: ``"paper"`` is Eq. 16 as written, recorded by repr, to_config and the hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd_lightning import DistillationModule
from cmkd_lightning.functional.cmkd import CMKD_PRESETS, cmkd_loss, resolve_preset
from cmkd_lightning.losses import CMKDLoss
from cmkd_lightning.models.digits_cnn import digits_student, digits_teacher


def _logits(seed: int = 0, n: int = 16, c: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), 3 * torch.randn(n, c, generator=g, dtype=torch.float64)


def _eq16_as_written(zs: torch.Tensor, zt: torch.Tensor, temperature: float, beta: float, gamma: float) -> float:
    """Eq. 9-16 by hand, one sample at a time: z-score, softmax at T, Pearson of the probabilities, ranks.

    The student's soft rank is the library's (tested against exact ranks in tests/functional); what this loop
    checks is what the preset fixes: the Pearson term's factor (1) and the entropy that splits the batch (of
    softmax(zscore(z_t) / T)).
    """
    from cmkd_lightning.functional.soft_rank import soft_rank

    def z(x):
        return (x - x.mean()) / x.std(correction=1)  # Eq. 10-11 with the sample std, as the library

    def r(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / math.sqrt(float((a * a).sum() * (b * b).sum())))

    rows = []
    entropies = []
    for s, t in zip(zs, zt):
        pt = torch.softmax(z(t) / temperature, dim=0)
        ps = torch.softmax(z(s) / temperature, dim=0)
        entropies.append(float(-(pt * pt.log()).sum()))
        soft = soft_rank(z(s)[None], 1.0 / zs.shape[1])[0]
        ranks = torch.argsort(torch.argsort(t)).double()
        rows.append((1 - r(ps, pt), 1 - r(soft, ranks)))
    mean_h = sum(entropies) / len(entropies)
    total = 0.0
    for (lp, ls), h in zip(rows, entropies):
        total += beta * lp + gamma * ls if h >= mean_h else gamma * lp + beta * ls
    return total / len(rows)


def test_paper_preset_is_eq16_as_written_against_a_per_sample_loop():
    zs, zt = _logits()
    loss = CMKDLoss.paper(temperature=4.0, fused=False)
    got = float(loss(zs, zt)["loss"])
    assert got == pytest.approx(_eq16_as_written(zs, zt, 4.0, 4.0, 1.0), rel=1e-6)
    # and it is not the library preset (the Pearson term times sqrt(C), the teacher's own entropy)
    assert float(CMKDLoss(fused=False)(zs, zt)["loss"]) != pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_presets_equal_their_explicit_settings(fused):
    zs, zt = _logits(1)
    for preset, settings in CMKD_PRESETS.items():
        by_preset = CMKDLoss(preset=preset, fused=fused)(zs, zt)["loss"]
        explicit = cmkd_loss(zs, zt, **settings)
        assert torch.allclose(by_preset, explicit, rtol=1e-9, atol=1e-12), preset


def test_paper_classmethod_repr_and_config_record_the_preset():
    loss = CMKDLoss.paper(temperature=1.0, sync_entropy_threshold=True)
    assert loss.init_args() == CMKDLoss(preset="paper", temperature=1.0, sync_entropy_threshold=True).init_args()
    text = repr(loss)
    assert "preset='paper'" in text and "pearson_scale='paper'" in text and "entropy_source='loss'" in text
    config = loss.to_config()
    assert config["init_args"]["preset"] == "paper"
    rebuilt = CMKDLoss(**config["init_args"])  # the recorded config rebuilds the same loss
    assert rebuilt.init_args() == loss.init_args()
    default = CMKDLoss()
    assert (default.preset, default.pearson_scale, default.entropy_source) == ("library", "sqrt_classes", "teacher")


def test_paper_preset_is_recorded_in_the_module_hyperparameters():
    module = DistillationModule(
        digits_student(100), teacher=digits_teacher(100), losses=[CMKDLoss.paper()], num_classes=100
    )
    (recorded,) = module.hparams["losses"]
    assert recorded["init_args"]["preset"] == "paper"
    assert recorded["init_args"]["pearson_scale"] == "paper"
    assert recorded["init_args"]["entropy_source"] == "loss"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "paper", "pearson_scale": "sqrt_classes"}, r"Expected `pearson_scale` to be 'paper' or None"),
        ({"preset": "paper", "pearson_scale": 2.0}, r"preset='paper' \(Eq. 16 as written\), but got 2.0"),
        ({"preset": "paper", "entropy_source": "teacher"}, r"Expected `entropy_source` to be 'loss' or None"),
        ({"preset": "Paper"}, r"Expected `preset` to be one of \('library', 'paper'\), but got 'Paper'"),
    ],
)
def test_contradicting_the_paper_preset_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CMKDLoss(**kwargs)


def test_library_preset_takes_any_setting_and_the_paper_accepts_its_own():
    assert CMKDLoss(pearson_scale=3.0, entropy_source="loss").init_args()["pearson_scale"] == 3.0
    assert CMKDLoss(preset="paper", pearson_scale="paper", entropy_source="loss").preset == "paper"
    assert resolve_preset("library", pearson_scale=None, entropy_source="loss") == {
        "pearson_scale": "sqrt_classes",
        "entropy_source": "loss",
        "temperature_units": "zscore",
    }
    with pytest.raises(ValueError, match=r"Expected preset settings among"):
        resolve_preset("paper", temperature=4.0)


def test_temperature_in_logit_units_targets_the_teachers_own_softmax():
    from cmkd_lightning.functional.cmkd import cmkd_terms, teacher_stats
    from cmkd_lightning.functional.correlation import pearson_corr

    zs, zt = _logits(2, c=50)
    zt = 7.0 * zt
    stats = teacher_stats(zt, temperature=4.0, temperature_units="logits")
    assert torch.allclose(stats.probs, torch.softmax(zt / 4.0, dim=1), rtol=1e-5, atol=1e-9)  # up to the z-score eps
    terms = cmkd_terms(zs, zt, temperature=4.0, temperature_units="logits")
    # the student's z-scored row on the teacher row's scale, by hand
    zs_hat = (zs - zs.mean(1, keepdim=True)) / zs.std(1, keepdim=True)
    ps = torch.softmax(zs_hat * zt.std(1, keepdim=True) / 4.0, dim=1)
    expected = 1 - pearson_corr(ps, torch.softmax(zt / 4.0, dim=1))
    assert torch.allclose(terms.pearson, expected, rtol=1e-6)
    # the ranks do not depend on the units
    assert torch.equal(terms.spearman, cmkd_terms(zs, zt, temperature=4.0).spearman)


def test_temperature_units_logits_runs_the_general_path_and_refuses_fused_true():
    zs, zt = _logits(3)
    auto = CMKDLoss(temperature_units="logits")(zs, zt)["loss"]
    general = CMKDLoss(temperature_units="logits", fused=False)(zs, zt)["loss"]
    assert torch.equal(auto, general)
    with pytest.raises(ValueError, match=r"Expected `fused` to be False or 'auto' with temperature_units='logits'"):
        CMKDLoss(temperature_units="logits", fused=True)
    with pytest.raises(ValueError, match=r"Expected `temperature_units` to be 'zscore' or None with preset='paper'"):
        CMKDLoss.paper(temperature_units="logits")
    with pytest.raises(ValueError, match=r"Expected `temperature_units` to be one of \('zscore', 'logits'\)"):
        CMKDLoss(temperature_units="raw")  # type: ignore[arg-type]
