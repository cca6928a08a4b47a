"""Named intermediate features of every zoo model and of any nn.Module, by forward hooks."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from cmkd_lightning.models import (
    create_model,
    extract_named_features,
    feature_hooks,
    feature_layers,
    list_models,
    margin_layers,
)

IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenetv1"}


def _input(name, n=2):
    g = torch.Generator().manual_seed(0)
    if name.startswith("digits"):
        return torch.randn(n, 1, 8, 16, generator=g)
    size = 64 if name in IMAGENET else 32  # ImageNet models run on any size; 64 keeps the test fast
    return torch.randn(n, 3, size, size, generator=g)


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_names_stages_without_changing_its_logits(name):
    model = create_model(name, num_classes=10).eval()
    x = _input(name)
    keys = set(model.state_dict())
    with torch.no_grad():
        plain = model(x)
        feats, logits = extract_named_features(model, x, feature_layers(model))
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    assert set(model.state_dict()) == keys
    assert not model._forward_hooks and not model._forward_pre_hooks  # noqa: SLF001 - the hooks were removed
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # noqa: SLF001
    stages = [k for k in feats if k.startswith("stage") and not k.endswith("_preact")]
    assert len(stages) >= 2 and "pooled" in feats
    assert feats["pooled"].shape[0] == 2
    for k in stages:  # stages shrink (or keep) their spatial size with depth
        assert feats[k].ndim == 4
    for a, b in zip(stages, stages[1:]):
        assert feats[a].shape[-1] >= feats[b].shape[-1]
    if not name.startswith("wrn"):  # (WRN's pre-activations are the next block's BN output, as in mdistiller)
        for k in stages:  # where the model names a pre-activation, the stage is its ReLU
            if f"{k}_preact" in feats:
                torch.testing.assert_close(F.relu(feats[f"{k}_preact"]), feats[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_40_2", "vgg13", "resnet50_cifar", "resnet34", "mobilenetv1"])
def test_margin_layers_are_batchnorms_of_the_preactivation_channels(name):
    model = create_model(name, num_classes=10).eval()
    feats, _ = extract_named_features(model, _input(name), feature_layers(model))
    bns = margin_layers(model)
    assert bns and set(bns) == {k for k in feats if k.endswith("_preact")}
    for feat, path in bns.items():
        bn = model.get_submodule(path)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == feats[feat].shape[1]


def test_cifar_resnet_features_equal_a_hand_written_forward():
    model = create_model("resnet20", num_classes=10).eval()
    x = _input("resnet20")
    with torch.no_grad():
        feats, _ = extract_named_features(model, x, feature_layers(model))
        h = F.relu(model.bn1(model.conv1(x)))
        torch.testing.assert_close(feats["stem"], h)
        for k in (1, 2, 3):
            stage = getattr(model, f"layer{k}")
            h = stage[:-1](h)
            block = stage[-1]
            out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h)))))
            pre = out + (h if block.downsample is None else block.downsample(h))
            h = F.relu(pre)
            torch.testing.assert_close(feats[f"stage{k}_preact"], pre)
            torch.testing.assert_close(feats[f"stage{k}"], h)
        torch.testing.assert_close(feats["pooled"], h.mean((2, 3)))


def test_wrn_preactivations_are_the_next_batchnorm_as_in_the_reference():
    model = create_model("wrn_16_2", num_classes=10).eval()
    with torch.no_grad():
        feats, _ = extract_named_features(model, _input("wrn_16_2"), feature_layers(model))
        torch.testing.assert_close(feats["stage1_preact"], model.block2.layer[0].bn1(feats["stage1"]))
        torch.testing.assert_close(feats["stage3_preact"], model.bn1(feats["stage3"]))


def test_torchvision_inplace_relu_preactivation_is_copied_before_it_runs():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, _ = extract_named_features(model, x, {"pre": "layer4.1.relu:input", "post": "layer4"})
    assert (feats["pre"] < 0).any()  # not overwritten by the in-place ReLU
    torch.testing.assert_close(F.relu(feats["pre"]), feats["post"])


def test_any_module_by_layer_name_with_gradients():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(2, 3, 6, 6)
    model(x)
    feats, logits = extract_named_features(model, x, ["0", "1:input", "0:relu", "3:input"])
    torch.testing.assert_close(feats["0:relu"], feats["1:input"].relu())
    assert feats["3:input"].shape == (2, 64)
    feats["0"].sum().backward()
    assert model[0].weight.grad is not None


def test_feature_hooks_fill_on_exit_and_remove_the_hooks():
    model = create_model("resnet8", num_classes=10)
    with feature_hooks(model, {"s2": "layer2"}) as feats:
        model(_input("resnet8"))
        assert feats == {}
    assert tuple(feats["s2"].shape) == (2, 32, 16, 16)
    assert all(not m._forward_hooks for m in model.modules())  # noqa: SLF001


def test_errors_name_the_layer_and_list_the_stage_names():
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(
        ValueError,
        match=r"Expected the layer spec 'layer9' \(feature 'layer9'\) to name a submodule of CifarResNet, but it has no module 'layer9'; zoo stage names: \['stem', 'stage1'",
    ):
        extract_named_features(model, _input("resnet8"), ["layer9"])
    with pytest.raises(ValueError, match=r"to end in one of \[':output', ':input', ':relu', ':copy'\], but got 'pre'"):
        extract_named_features(model, _input("resnet8"), ["layer1:pre"])
    with pytest.raises(
        TypeError, match=r"Expected a model of the zoo or a torchvision ResNet to name its stages, but got Sequential"
    ):
        feature_layers(nn.Sequential(nn.Linear(2, 2)))
    unused = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    unused.forward = lambda x: unused["a"](x)
    with pytest.raises(
        ValueError, match=r"Expected the layers \['b'\] of ModuleDict to run during forward, but they did not"
    ):
        extract_named_features(unused, torch.randn(1, 2), ["b"])
