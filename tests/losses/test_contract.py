"""One contract suite parametrised over every loss class (STYLE: kornia's per-loss template)."""

from pathlib import Path

import pytest
import torch

from cmkd_lightning import functional as F
from cmkd_lightning.losses import (
    CMKDLoss,
    DistillationLoss,
    DISTLoss,
    DKDLoss,
    FeatureDistillationLoss,
    KDLoss,
    LSKDLoss,
    NKDLoss,
)

# (module, the equivalent functional call, logged components)
CASES = {
    "kd": (KDLoss(temperature=3.0), lambda s, t, y: F.kd_loss(s, t, temperature=3.0), {"kd_loss"}),
    "lskd": (LSKDLoss(temperature=2.0), lambda s, t, y: F.lskd_loss(s, t, temperature=2.0), {"lskd_loss"}),
    "dkd": (
        DKDLoss(alpha=1.0, beta=6.0, temperature=4.0),
        lambda s, t, y: F.dkd_loss(s, t, y, alpha=1.0, beta=6.0, temperature=4.0),
        {"tckd_loss", "nckd_loss"},
    ),
    "dist": (
        DISTLoss(temperature=4.0, beta=2.0),
        lambda s, t, y: F.dist_loss(s, t, temperature=4.0, beta=2.0, gamma=2.0),
        {"inter_loss", "intra_loss"},
    ),
    "nkd": (
        NKDLoss(temperature=1.0, gamma=1.5),
        lambda s, t, y: F.nkd_loss(s, t, y, temperature=1.0, gamma=1.5),
        {"target_loss", "non_target_loss"},
    ),
    "cmkd": (
        CMKDLoss(temperature=4.0, beta=4.0, gamma=1.0),
        lambda s, t, y: F.cmkd_loss(s, t, temperature=4.0, beta=4.0, gamma=1.0),
        {"pearson_loss", "spearman_loss", "hard_fraction", "teacher_entropy"},
    ),
}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(11)
    zt = torch.randn(6, 8, generator=g, dtype=torch.float64) * 2
    zs = torch.randn(6, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 8, (6,), generator=g)
    return zs, zt, y


def test_every_loss_class_is_covered():
    classes = {type(module) for module, _, _ in CASES.values()}
    library = {c for c in DistillationLoss.__subclasses__() if c.__module__.startswith("cmkd_lightning.")}
    library.discard(FeatureDistillationLoss)  # its subclasses: tests/losses/test_feature_losses.py
    assert classes == library


@pytest.mark.parametrize("name", CASES)
def test_module_equals_function(name, batch):
    module, fn, _ = CASES[name]
    zs, zt, y = batch
    torch.testing.assert_close(module(zs, zt, y)["loss"], fn(zs, zt, y))


@pytest.mark.parametrize("name", CASES)
def test_output_dict(name, batch):
    module, _, components = CASES[name]
    zs, zt, y = batch
    zs = zs.clone().requires_grad_(True)
    out = module(zs, zt, y)
    assert set(out) == {"loss"} | components
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    for key in components:
        assert out[key].ndim == 0 and not out[key].requires_grad, key
    out["loss"].backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name, batch):
    module, _, _ = CASES[name]
    zs, zt, y = batch
    zs = zs[:4, :5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: module(s, zt[:4, :5], y[:4] % 5)["loss"], (zs,))


@pytest.mark.parametrize("name", CASES)
def test_teacher_gets_no_gradient(name, batch):
    module, _, _ = CASES[name]
    zs, zt, y = batch
    zt = zt.clone().requires_grad_(True)
    module(zs.clone().requires_grad_(True), zt, y)["loss"].backward()
    assert zt.grad is None or zt.grad.abs().sum() == 0


@pytest.mark.parametrize("cls", [DKDLoss, NKDLoss])
def test_target_losses_require_targets(cls, batch):
    zs, zt, _ = batch
    assert cls.requires_targets
    with pytest.raises(ValueError, match=r"This loss needs `targets`"):
        cls()(zs, zt)


def test_warmup_factor_matches_reference_schedule():
    loss = DKDLoss(warmup_epochs=20)
    assert [loss.warmup_factor(e) for e in (0, 9, 19, 20, 100)] == [1 / 20, 10 / 20, 1.0, 1.0, 1.0]
    assert KDLoss().warmup_factor(0) == 1.0


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: KDLoss(temperature=0), r"Expected `temperature` to be a finite number > 0, but got 0\."),
        (lambda: DKDLoss(beta=-1.0), r"Expected `beta` to be a finite number >= 0, but got -1\.0\."),
        (lambda: DKDLoss(warmup_epochs=-2), r"Expected `warmup_epochs` to be an integer >= 0, but got -2\."),
        (
            lambda: CMKDLoss(rank_backend="numpy"),
            r"Expected `rank_backend` to be one of \('auto', 'torch', 'torchsort'\), but got 'numpy'\.",
        ),
        (
            lambda: CMKDLoss(regularization_strength=0.0),
            r"Expected `regularization_strength` to be a finite number > 0",
        ),
    ],
)
def test_constructor_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_cmkd_warns_at_construction_for_spearman_without_zscore():
    with pytest.warns(UserWarning, match="zscore=False"):
        CMKDLoss(zscore=False)


def test_cmkd_components_are_batch_means(batch):
    zs, zt, _ = batch
    out = CMKDLoss()(zs, zt)
    terms = F.cmkd_terms(zs, zt)
    torch.testing.assert_close(out["pearson_loss"], terms.pearson.mean())
    torch.testing.assert_close(out["spearman_loss"], terms.spearman.mean())
    torch.testing.assert_close(out["hard_fraction"], terms.hard.double().mean().float())


DIAGNOSTICS = {"hard_fraction", "teacher_entropy"}  # logged values that are not loss terms (docs/METRICS.md)


@pytest.mark.parametrize("name", CASES)
def test_component_names_say_what_they_are(name, batch):
    # A loss term is named `<term>_loss` (lower is better); only the listed diagnostics keep plain names, and every
    # logged `<loss>/<component>` key is listed in docs/METRICS.md.
    module, _, components = CASES[name]
    metrics_doc = (Path(__file__).resolve().parents[2] / "docs" / "METRICS.md").read_text()
    for key in components:
        assert key.endswith("_loss") or key in DIAGNOSTICS, (name, key)
        assert f"<stage>/{module.name}/{key}`" in metrics_doc, (name, key)


def test_old_lskd_spellings_are_deprecated_aliases(monkeypatch):
    import importlib
    import sys

    zs, zt = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.warns(DeprecationWarning, match="lskd_loss"):
        old = F.ls_kd_loss(zs, zt)
    torch.testing.assert_close(old, F.lskd_loss(zs, zt))
    for module in ("cmkd_lightning.functional.ls_kd", "cmkd_lightning.losses.ls_kd"):
        monkeypatch.delitem(sys.modules, module, raising=False)  # import afresh, so the warning is given
        with pytest.warns(DeprecationWarning, match="deprecated"):
            importlib.import_module(module)
    assert sys.modules["cmkd_lightning.losses.ls_kd"].LSKDLoss is LSKDLoss
    assert LSKDLoss.name == "lskd"
