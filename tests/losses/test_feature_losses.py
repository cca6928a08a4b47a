"""Contract of every feature-based loss (STYLE: one suite parametrised over the classes), their connectors,
defaults and errors; the formulas themselves are tested in tests/functional/test_feature_losses.py."""

import math

import pytest
import torch
from torch import nn

from cmkd_lightning import functional as F
from cmkd_lightning.losses import (
    ATLoss,
    CRDLoss,
    FeatureDistillationLoss,
    FitNetLoss,
    OFDLoss,
    ReviewKDLoss,
    RKDLoss,
)
from cmkd_lightning.models import create_model, extract_named_features

# name -> (factory, logged components, authors' loss weight, authors' CE weight)
CASES = {
    "fitnet": (FitNetLoss, {"hint_loss"}, 100.0, 1.0),
    "at": (ATLoss, {"at_loss"}, 1000.0, 1.0),
    "rkd": (RKDLoss, {"distance_loss", "angle_loss"}, 1.0, 1.0),
    "ofd": (OFDLoss, {"ofd_loss"}, 1e-3, 1.0),
    "reviewkd": (ReviewKDLoss, {"hcl_loss"}, 1.0, 1.0),
    "crd": (lambda: CRDLoss(num_samples=40, num_negatives=16), {"student_nce_loss", "teacher_nce_loss"}, 0.8, 1.0),
}


def _nets(dtype=torch.float32):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10).to(dtype)
    teacher = create_model("resnet14", num_classes=10).to(dtype).eval()
    return student, teacher


def _step(loss, student, teacher, n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 32, 32, generator=g, dtype=dtype)
    fs, zs = extract_named_features(student, x, loss.student_specs)
    with torch.no_grad():
        ft, zt = extract_named_features(teacher, x, loss.teacher_specs)
    extra = {"indices": torch.arange(n)} if loss.requires_indices else {}
    return loss(zs, zt, student_features=list(fs.values()), teacher_features=list(ft.values()), **extra)


def test_every_feature_loss_class_is_covered():
    assert {type(f()) for f, *_ in CASES.values()} == set(FeatureDistillationLoss.__subclasses__())


@pytest.mark.parametrize("name", CASES)
def test_recommended_weights_are_the_authors(name):
    factory, _, weight, ce = CASES[name]
    loss = factory()
    assert (loss.recommended_weight, loss.recommended_ce_weight) == (weight, ce)


@pytest.mark.parametrize("name", CASES)
def test_output_dict_and_gradients_reach_student_and_connectors(name):
    factory, components, *_ = CASES[name]
    loss = factory()
    student, teacher = _nets()
    loss.build(student, teacher)
    out = _step(loss, student, teacher)
    assert set(out) == {"loss"} | components
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    for key in components:
        assert out[key].ndim == 0 and not out[key].requires_grad
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for p in loss.parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("name", CASES)
def test_config_round_trip_rebuilds_the_same_loss(name):
    factory, *_ = CASES[name]
    loss = factory()
    config = loss.to_config()
    assert config["class_path"] == f"cmkd_lightning.losses.{type(loss).__name__}"
    assert type(loss)(**config["init_args"]).init_args() == loss.init_args()


class Tiny(nn.Module):
    """Two conv stages on 4x4 inputs: small enough for gradcheck, named by layer paths (not a zoo model)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU()
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


TINY = {"input_shape": [3, 4, 4]}
STAGES = {"student_layers": ["relu1", "relu2"], "teacher_layers": ["relu1", "relu2"]}
TINY_CASES = {
    "fitnet": lambda: FitNetLoss(student_layers=["relu2"], teacher_layers=["relu2"], **TINY),
    "at": lambda: ATLoss(**STAGES, **TINY),
    "rkd": lambda: RKDLoss(student_layers=["fc:input"], teacher_layers=["fc:input"], **TINY),
    "ofd": lambda: OFDLoss(
        student_layers=["relu1:input", "relu2:input"],
        teacher_layers=["relu1:input", "relu2:input"],
        margin_layers=["bn1", "bn2"],
        **TINY,
    ),
    "reviewkd": lambda: ReviewKDLoss(
        student_layers=["relu1", "relu2", "fc:input"], teacher_layers=["relu1:input", "relu2:input", "fc:input"], **TINY
    ),
    "crd": lambda: CRDLoss(
        num_samples=12, num_negatives=5, feature_dim=4, student_layers=["fc:input"], teacher_layers=["fc:input"], **TINY
    ),
}


def test_every_feature_loss_has_a_gradcheck_case():
    assert set(TINY_CASES) == set(CASES)


@pytest.mark.parametrize("name", TINY_CASES)
def test_gradcheck_through_connectors_in_float64(name):
    torch.manual_seed(0)
    student, teacher = Tiny(2).double(), Tiny(3).double().eval()
    loss = TINY_CASES[name]()
    loss.build(student, teacher)
    loss.double().eval()  # BN of the connectors on running statistics, CRD without memory updates
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fs, zs = extract_named_features(student.eval(), x, loss.student_specs)
    ft, zt = extract_named_features(teacher, x, loss.teacher_specs)
    fs = [f.detach() for f in fs.values()]
    ft = [f.detach() for f in ft.values()]
    extra = {"indices": torch.arange(2)} if loss.requires_indices else {}
    if name == "crd":  # the normalising constants are fixed in a training step first
        loss.normalisers.fill_(5.0)
        extra["contrast_indices"] = torch.tensor([[0, 3, 4, 5, 6, 7], [1, 8, 9, 10, 11, 2]])

    def fn(*student_features):
        return loss(zs, zt, student_features=list(student_features), teacher_features=ft, **extra)["loss"]

    inputs = tuple(f.clone().requires_grad_(True) for f in fs)
    assert torch.autograd.gradcheck(fn, inputs)


def test_fitnet_regressor_follows_the_shapes():
    loss = FitNetLoss(student_layers=["stage1"], teacher_layers=["stage2"])
    loss.build(*_nets())
    conv = loss.regressor.conv
    assert isinstance(conv, torch.nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (3, 3)
    loss = FitNetLoss(student_layers=["stage3"], teacher_layers=["stage2"])
    loss.build(*_nets())
    assert isinstance(loss.regressor.conv, torch.nn.ConvTranspose2d)


def test_ofd_margins_come_from_the_teachers_batchnorm_before_each_preactivation():
    student, teacher = _nets()
    with torch.no_grad():
        for bn in (teacher.layer1[-1].bn2, teacher.layer3[-1].bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    loss = OFDLoss()
    loss.build(student, teacher)
    assert loss.teacher_specs == ["layer1.1.relu:input", "layer2.1.relu:input", "layer3.1.relu:input"]
    torch.testing.assert_close(loss.margin_0, F.ofd_margin(teacher.layer1[-1].bn2.weight, teacher.layer1[-1].bn2.bias))
    torch.testing.assert_close(loss.margin_2, F.ofd_margin(teacher.layer3[-1].bn2.weight, teacher.layer3[-1].bn2.bias))
    conv = loss.connectors[0][0]
    assert conv.kernel_size == (1, 1) and conv.bias is None
    assert abs(float(conv.weight.detach().std()) - math.sqrt(2.0 / 16)) < 0.1  # N(0, 2 / (k * k * C_t)), C_t = 16


def test_reviewkd_sizes_its_fusions_from_the_features():
    loss = ReviewKDLoss()
    loss.build(*_nets())
    assert loss.student_specs == ["layer1", "layer2", "layer3", "fc:input"]
    assert loss.teacher_specs == ["layer1.1.relu:input", "layer2.1.relu:input", "layer3.1.relu:input", "fc:input"]
    assert [abf.att_conv is None for abf in loss.abfs] == [True, False, False, False]  # deepest first, no fusion
    assert loss.abfs[0].conv1[0].out_channels == 64  # mid = min(512, C of the deepest student level)
    assert (loss.warmup_epochs, loss.warmup_factor(0), loss.warmup_factor(19)) == (20, 0.05, 1.0)


def test_crd_memory_update_and_normalisers():
    loss = CRDLoss(num_samples=10, num_negatives=4)
    student, teacher = _nets()
    loss.build(student, teacher)
    before = loss.memory_student.clone()
    bound = 1 / math.sqrt(128 / 3)
    assert float(before.abs().max()) <= bound
    loss.train()
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    idx = torch.tensor([3, 7])
    contrast = torch.tensor([[3, 0, 1, 2, 4], [7, 5, 6, 8, 9]])
    z = torch.zeros(2, 10)
    loss(z, z, student_features=[fs], teacher_features=[ft], indices=idx, contrast_indices=contrast)
    vs = loss.embed_student(fs).detach()
    expected = before[idx] * 0.5 + vs * 0.5
    torch.testing.assert_close(loss.memory_student[idx], expected / expected.norm(dim=1, keepdim=True))
    torch.testing.assert_close(loss.memory_student[[0, 1, 2]], before[[0, 1, 2]])
    z_first = loss.normalisers.clone()
    assert (z_first > 0).all()
    loss(z, z, student_features=[fs], teacher_features=[ft], indices=idx, contrast_indices=contrast)
    torch.testing.assert_close(loss.normalisers, z_first)  # fixed after the first step
    loss.eval()
    frozen = loss.memory_student.clone()
    loss(z, z, student_features=[fs], teacher_features=[ft], indices=idx)  # negatives drawn on the device
    torch.testing.assert_close(loss.memory_student, frozen)


def test_build_errors_name_the_argument():
    student, teacher = _nets()
    with pytest.raises(
        ValueError, match=r"Expected `student_layers` to name one hint layer, but got \['stage1', 'stage2'\]"
    ):
        FitNetLoss(student_layers=["stage1", "stage2"])
    with pytest.raises(ValueError, match=r"Expected as many student as teacher features for AT, but got 2 and 3"):
        ATLoss(student_layers=["stage1", "stage2"]).build(student, teacher)
    with pytest.raises(
        TypeError, match=r"Expected `teacher_layers` to be a list of layer names or None, but got 'stage1'"
    ):
        ATLoss(teacher_layers="stage1")
    with pytest.raises(ValueError, match=r"Expected `input_shape` to be a list of positive integers, but got \[3, 0\]"):
        RKDLoss(input_shape=[3, 0])
    with pytest.raises(ValueError, match=r"Expected `num_samples` to be a positive integer, but got 0"):
        CRDLoss(num_samples=0)
    with pytest.raises(ValueError, match=r"Expected `kernel_size` to be an odd integer >= 1, but got 2"):
        OFDLoss(kernel_size=2)
    with pytest.raises(ValueError, match=r"Expected `margin_layers` for the teacher features \['layer3'\]"):
        OFDLoss(teacher_layers=["layer3"]).build(student, teacher)
    loss = CRDLoss(num_samples=8)
    loss.build(student, teacher)
    z = torch.zeros(2, 10)
    with pytest.raises(ValueError, match=r"Expected the batch to carry the samples' dataset `indices`"):
        loss(z, z, student_features=[torch.randn(2, 64)], teacher_features=[torch.randn(2, 64)])
    with pytest.raises(RuntimeError, match=r"FitNetLoss has no regressor yet: call `build\(student, teacher\)` first"):
        FitNetLoss()(z, z, student_features=[], teacher_features=[])
