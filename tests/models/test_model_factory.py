import re

import pytest
import torch
import torchvision

from cmkd_lightning.models import MODEL_ALIASES, MODELS, create_model, list_models, model_aliases, resolve_model_name
from cmkd_lightning.models.mobilenetv2 import MobileNetV2Cifar
from cmkd_lightning.models.resnet50_cifar import CifarResNetBottleneck
from cmkd_lightning.models.resnet_cifar import CifarResNet
from cmkd_lightning.models.shufflenetv1 import ShuffleNetV1
from cmkd_lightning.models.wrn import WideResNet

REQUIRED = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2",
    "shufflenetv1", "shufflenetv2", "resnet50_cifar", "resnet18", "resnet34", "resnet50", "mobilenetv1",
]  # fmt: skip


def test_list_models_is_the_registry():
    assert list_models() == list(MODELS)
    assert isinstance(MODELS, dict)
    assert sorted(list_models()) == sorted([*REQUIRED, "digits_teacher", "digits_student"])


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("resnet32x4", "resnet32x4"),
        ("ResNet32x4", "resnet32x4"),
        ("shufflev1", "shufflenetv1"),
        ("ShuffleV1", "shufflenetv1"),
        ("SHUFFLEV2", "shufflenetv2"),
        ("ShuffleNetV2", "shufflenetv2"),
        ("mobilenetv2", "mobilenetv2"),
        ("MobileNetV2", "mobilenetv2"),
        ("mobile_half", "mobilenetv2"),
        ("WRN_40_2", "wrn_40_2"),
        ("wrn-40-2", "wrn_40_2"),
        ("vgg13_bn", "vgg13"),
        ("mobilenetv1", "mobilenetv1"),
        ("MobileNetV1", "mobilenetv1"),
        ("ResNet18", "resnet18"),
        ("ResNet34", "resnet34"),
        ("ResNet50", "resnet50_cifar"),
        ("resnet50_cifar", "resnet50_cifar"),
        ("resnet50", "resnet50"),
    ],
)
def test_aliases(alias, expected):
    assert resolve_model_name(alias) == expected


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("resnet32x4", CifarResNet),
        ("wrn_40_2", WideResNet),
        ("MobileNetV2", MobileNetV2Cifar),
        ("mobilenetv2", MobileNetV2Cifar),
        ("ShuffleV1", ShuffleNetV1),
        ("shufflenetv1", ShuffleNetV1),
        ("ResNet50", CifarResNetBottleneck),
        ("resnet50_cifar", CifarResNetBottleneck),
        ("resnet50", torchvision.models.ResNet),
    ],
)
def test_create_model_builds_the_named_class(name, cls):
    model = create_model(name, num_classes=10)
    assert type(model) is cls
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_and_imagenet_resnet50_differ():
    cifar, imagenet = create_model("ResNet50"), create_model("resnet50")
    assert "linear.weight" in cifar.state_dict() and "fc.weight" in imagenet.state_dict()


def test_case_only_spelling_of_resnet50_is_ambiguous():
    with pytest.raises(ValueError, match=re.escape("matches ['resnet50', 'resnet50_cifar']")):
        resolve_model_name("RESNET50")


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"Expected `name` to be one of \[.*'resnet32x4'.*'MobileNetV1'.*\].*'resnet9'"
    ):
        create_model("resnet9")


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match="Expected `name` to be a str, but got int"):
        create_model(56)


@pytest.mark.parametrize(
    ("num_classes", "error", "message"),
    [
        (1, ValueError, "Expected `num_classes` to be an int >= 2, but got 1."),
        (0, ValueError, "Expected `num_classes` to be an int >= 2, but got 0."),
        (10.0, TypeError, "Expected `num_classes` to be an int >= 2, but got float."),
        (True, TypeError, "Expected `num_classes` to be an int >= 2, but got bool."),
    ],
)
def test_num_classes_is_validated(num_classes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        create_model("resnet8", num_classes=num_classes)


def test_unknown_keyword_is_rejected_with_the_accepted_ones():
    with pytest.raises(TypeError, match=re.escape("model 'resnet8' to be among [], but got ['pretrained']")):
        create_model("resnet8", pretrained=True)
    with pytest.raises(TypeError, match=re.escape("['pretrained', 'weights'], but got ['dropout']")):
        create_model("resnet18", num_classes=1000, dropout=0.1)


def test_pretrained_selects_torchvision_v1_weights(monkeypatch):
    calls = {}

    def fake_resnet34(*, weights, num_classes):
        calls.update(weights=weights, num_classes=num_classes)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(torchvision.models, "resnet34", fake_resnet34)
    create_model("resnet34", num_classes=1000, pretrained=True)
    assert calls == {"weights": torchvision.models.ResNet34_Weights.IMAGENET1K_V1, "num_classes": 1000}
    create_model("resnet34", num_classes=1000, weights="DEFAULT")
    assert calls["weights"] is torchvision.models.ResNet34_Weights.DEFAULT
    create_model("resnet34", num_classes=10)
    assert calls == {"weights": None, "num_classes": 10}


def test_pretrained_weights_are_validated_before_any_download():
    with pytest.raises(ValueError, match=re.escape("Expected `num_classes` to be 1000 with pretrained resnet18")):
        create_model("resnet18", num_classes=100, pretrained=True)
    with pytest.raises(ValueError, match=re.escape("['IMAGENET1K_V1', 'IMAGENET1K_V2', 'DEFAULT'], but got 'V3'")):
        create_model("resnet50", num_classes=1000, weights="V3")
    with pytest.raises(ValueError, match="either `pretrained=True` or `weights`"):
        create_model("resnet50", num_classes=1000, pretrained=True, weights="DEFAULT")
    with pytest.raises(TypeError, match="Expected `pretrained` to be a bool"):
        create_model("resnet50", num_classes=1000, pretrained="yes")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: CifarResNet(9, (16, 16, 32, 64)), "Expected `depth` to be 6n + 2 with n >= 1, but got 9."),
        (lambda: WideResNet(15, 2), "Expected `depth` to be 6n + 4 with n >= 1, but got 15."),
        (lambda: MobileNetV2Cifar(width_mult=0.0), "Expected `width_mult` to be > 0, but got 0.0."),
    ],
)
def test_constructor_arguments_are_validated(factory, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        factory()


def test_canonical_names_share_one_case_style_and_aliases_point_at_them():
    # canonical keys: lower case, digits and `_` only; every alias names a canonical key and is not one itself
    for name in list_models():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
    for alias, target in MODEL_ALIASES.items():
        assert target in MODELS and alias not in MODELS, alias
        assert resolve_model_name(alias) == target
    assert model_aliases()["shufflenetv1"] == ["ShuffleV1"]
    assert sorted(a for names in model_aliases().values() for a in names) == sorted(MODEL_ALIASES)
    # the community's spellings the configs and published checkpoints use are all accepted
    for community in ("resnet8x4", "resnet32x4", "wrn_40_2", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50"):
        assert resolve_model_name(community) in MODELS


def test_cmkd_list_models_shows_canonical_names_and_aliases(capsys):
    from cmkd_lightning.cli import main

    main(["list", "models"])
    lines = capsys.readouterr().out.splitlines()
    assert "  mobilenetv2  (also: MobileNetV2, mobile_half)" in lines
    assert "  resnet50_cifar  (also: ResNet50)" in lines
    assert "  resnet8x4" in lines
