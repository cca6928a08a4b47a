"""Contract suite run on every registered model (a model added to the registry is tested automatically)."""

import hashlib

import pytest
import torch
import torchvision
from torch import nn

from cmkd_lightning.models import create_model, extract_features, get_classifier, list_models

IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenetv1"}
DIGITS = {"digits_teacher", "digits_student"}  # 1 x 8 x 16 composed-digit images
ALL = list_models()

# Exact trainable-parameter counts at 100 classes (CIFAR) / 1000 classes (ImageNet). Rounded to 0.01 M they are
# the figures published for the CIFAR-100 KD benchmark (e.g. resnet8x4 1.23 M, resnet32x4 7.43 M,
# wrn_40_2 2.26 M, resnet56 0.86 M, vgg13 9.46 M, MobileNetV2 0.81 M, ShuffleV1 0.95 M, ResNet50 23.71 M) and, for
# MobileNetV1, the 4.2 M of the ImageNet benchmark; the torchvision counts are checked against torchvision's own
# metadata below. The CIFAR ResNet/WRN/VGG rows are re-derived from closed-form formulas in this file.
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "digits_teacher": 84_916,
    "digits_student": 4_572,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "resnet50_cifar": 23_705_252,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv1": 4_231_976,
}

# Fingerprint of the state_dict layout: sha256 (first 16 hex digits) of the sorted "key:shape" lines at 100
# (CIFAR) / 1000 (MobileNetV1) classes. Each value was recorded after checking that the model's keys and shapes
# equal those of the RepDistiller / mdistiller definition of the same name, that the reference state_dict loads
# with strict=True, and that both give the same logits. A changed name or shape breaks checkpoint loading and
# changes the fingerprint. (torchvision models are torchvision's own and are not listed.)
LAYOUT_DIGESTS = {
    "resnet8": "166d31a811b31c5f",
    "resnet14": "8525efa6fc491f19",
    "resnet20": "6db44f39e3bff21f",
    "resnet32": "325ee6108709f7b5",
    "resnet44": "f1263f7b0ed71e1a",
    "resnet56": "3977b81559d8630f",
    "resnet110": "7f8e5ac1814e480a",
    "resnet8x4": "5d5871b403f3a649",
    "resnet32x4": "610ad29043c56b33",
    "wrn_16_1": "f6cf46040022f13d",
    "wrn_16_2": "bdbc50a2b3205f84",
    "wrn_40_1": "deef22602ae7584b",
    "wrn_40_2": "bf5731c8e8e2b95f",
    "vgg8": "d9f8d7533423754e",
    "vgg11": "6592bd1869a5938f",
    "vgg13": "7bec65f1ca17a0bf",
    "vgg16": "b420ddff7e4306ec",
    "vgg19": "2d318270df30c723",
    "mobilenetv2": "10e9036e17013c38",
    "shufflenetv1": "eb3bcbc847930cce",
    "shufflenetv2": "b7e2c3e764687767",
    "resnet50_cifar": "d4a9e0738c8f8385",
    "mobilenetv1": "2c25d7608115018d",
}

# Readable spot checks of the published key names and shapes, one or more per family.
SPOT_KEYS = {
    "resnet8x4": {
        "conv1.weight": (32, 3, 3, 3),
        "layer1.0.downsample.0.weight": (64, 32, 1, 1),
        "layer3.0.conv2.weight": (256, 256, 3, 3),
        "fc.weight": (100, 256),
    },
    "resnet56": {"layer1.8.bn2.running_var": (16,), "layer2.0.downsample.1.weight": (32,), "fc.bias": (100,)},
    "wrn_40_2": {
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block3.layer.5.conv2.weight": (128, 128, 3, 3),
        "bn1.weight": (128,),
        "fc.weight": (100, 128),
    },
    "vgg13": {
        "block0.0.bias": (64,),
        "block0.4.running_mean": (64,),
        "block4.3.weight": (512, 512, 3, 3),
        "classifier.weight": (100, 512),
    },
    "mobilenetv2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
    },
    "shufflenetv1": {
        "layer1.0.conv1.weight": (54, 24, 1, 1),
        "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer3.3.conv3.weight": (960, 80, 1, 1),
        "linear.weight": (100, 960),
    },
    "shufflenetv2": {
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.1.conv1.weight": (58, 58, 1, 1),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
    "resnet50_cifar": {
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "linear.weight": (100, 2048),
    },
    "mobilenetv1": {
        "model.0.0.weight": (32, 3, 3, 3),
        "model.13.3.weight": (1024, 1024, 1, 1),
        "fc.weight": (1000, 1024),
    },
}


def _spec(name: str) -> tuple[int, tuple[int, int, int]]:
    """(num_classes, input shape) used for a model in these tests."""
    if name in DIGITS:
        return 100, (1, 8, 16)
    return (1000, (3, 64, 64)) if name in IMAGENET else (100, (3, 32, 32))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _digest(model: nn.Module) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_tables_cover_the_registry():
    assert set(PARAM_COUNTS) == set(ALL)
    torchvision_models = {n for n in ALL if type(create_model(n, 1000)).__module__.startswith("torchvision")}
    assert torchvision_models == {"resnet18", "resnet34", "resnet50"}
    assert set(LAYOUT_DIGESTS) == set(ALL) - torchvision_models - DIGITS  # ours: no community layout to match


@pytest.mark.parametrize("name", ALL)
def test_param_count_and_layout(name):
    num_classes, _ = _spec(name)
    model = create_model(name, num_classes=num_classes)
    assert _n_params(model) == PARAM_COUNTS[name]
    if name in LAYOUT_DIGESTS:
        assert _digest(model) == LAYOUT_DIGESTS[name]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in SPOT_KEYS.get(name, {}).items():
        assert shapes[key] == shape, key


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    num_classes, size = _spec(name)
    model = create_model(name, num_classes=num_classes).train()
    x = torch.randn(2, *size)
    logits = model(x)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, tmp_path):
    num_classes, size = _spec(name)
    source = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        source.train()(torch.randn(4, *size))  # move the BN running statistics away from (0, 1)
    source.eval()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    target = create_model(name, num_classes=num_classes).eval()
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = source(x)
        assert not torch.equal(target(x), expected)
        target.load_state_dict(torch.load(path, weights_only=True), strict=True)
        assert torch.equal(target(x), expected)


@pytest.mark.parametrize("name", ALL)
def test_extract_features(name):
    num_classes, size = _spec(name)
    model = create_model(name, num_classes=num_classes).eval()
    classifier = get_classifier(model)
    assert isinstance(classifier, nn.Linear)
    assert classifier.out_features == num_classes
    x = torch.randn(2, *size)
    with torch.no_grad():
        features, logits = extract_features(model, x)
        assert features.shape == (2, classifier.in_features)
        assert torch.equal(logits, model(x))
        torch.testing.assert_close(classifier(features), logits)
    assert len(classifier._forward_pre_hooks) == 0


# --- independent closed-form parameter counts -------------------------------------------------------------------


def _bn(c):
    return 2 * c


def _cifar_resnet_params(depth, widths, classes):
    n = (depth - 2) // 6
    total = 27 * widths[0] + _bn(widths[0])
    c_in = widths[0]
    for stage, c in enumerate(widths[1:]):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            total += 9 * c_in * c + _bn(c) + 9 * c * c + _bn(c)
            if stride != 1 or c_in != c:
                total += c_in * c + _bn(c)
            c_in = c
    return total + c_in * classes + classes


def _wrn_params(depth, k, classes):
    n = (depth - 4) // 6
    total = 27 * 16
    c_in = 16
    for c in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += _bn(c_in) + 9 * c_in * c + _bn(c) + 9 * c * c + (c_in * c if c_in != c else 0)
            c_in = c
    return total + _bn(c_in) + c_in * classes + classes


def _vgg_params(blocks, classes):
    total, c_in = 0, 3
    for block in blocks:
        for c in block:
            total += 9 * c_in * c + c + _bn(c)
            c_in = c
    return total + c_in * classes + classes


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *[(f"resnet{d}", _cifar_resnet_params(d, (16, 16, 32, 64), 100)) for d in (8, 14, 20, 32, 44, 56, 110)],
        ("resnet8x4", _cifar_resnet_params(8, (32, 64, 128, 256), 100)),
        ("resnet32x4", _cifar_resnet_params(32, (32, 64, 128, 256), 100)),
        *[(f"wrn_{d}_{k}", _wrn_params(d, k, 100)) for d in (16, 40) for k in (1, 2)],
        ("vgg8", _vgg_params([[64], [128], [256], [512], [512]], 100)),
        ("vgg13", _vgg_params([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], 100)),
        ("vgg19", _vgg_params([[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4], 100)),
    ],
)
def test_param_table_matches_closed_form(name, expected):
    assert PARAM_COUNTS[name] == expected


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resnet8x4", 1.23), ("resnet32x4", 7.43), ("wrn_40_2", 2.26), ("wrn_16_2", 0.70), ("resnet56", 0.86),
     ("resnet110", 1.74), ("vgg13", 9.46), ("mobilenetv2", 0.81), ("shufflenetv1", 0.95),
     ("shufflenetv2", 1.36), ("resnet50_cifar", 23.71), ("mobilenetv1", 4.23)],
)  # fmt: skip
def test_param_table_matches_published_figures(name, millions):
    assert round(PARAM_COUNTS[name] / 1e6, 2) == millions


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_param_counts_match_torchvision_metadata(name):
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    assert PARAM_COUNTS[name] == weights.meta["num_params"]


def test_num_classes_changes_only_the_classifier():
    a, b = create_model("wrn_16_2", num_classes=100), create_model("wrn_16_2", num_classes=10)
    assert _n_params(a) - _n_params(b) == 90 * (128 + 1)


def test_vgg_pools_before_block4_on_64px_inputs():
    model = create_model("vgg8", num_classes=10).eval()
    shapes = []
    model.block4.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        model(torch.randn(1, 3, 64, 64))
    assert shapes == [(4, 4), (4, 4)]
