import pytest
import torch
import torchvision
from torch import nn

from cmkd_lightning.models import create_model, extract_features, get_classifier
from cmkd_lightning.models._layers import channel_shuffle


@pytest.mark.parametrize(
    ("factory", "path"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "fc"),
        (lambda: torchvision.models.mobilenet_v2(num_classes=10), "classifier.1"),
        (lambda: torchvision.models.squeezenet1_0(num_classes=10), None),
        (lambda: create_model("mobilenetv2", num_classes=10), "classifier.0"),
        (lambda: create_model("shufflenetv2", num_classes=10), "linear"),
        (lambda: create_model("vgg8", num_classes=10), "classifier"),
    ],
)
def test_get_classifier(factory, path):
    model = factory()
    if path is None:  # squeezenet classifies with a 1x1 convolution: there is no final linear layer
        with pytest.raises(ValueError, match=r"Expected `model` \(SqueezeNet\) to keep its final nn.Linear"):
            get_classifier(model)
    else:
        assert get_classifier(model) is model.get_submodule(path)


def test_get_classifier_rejects_non_modules():
    with pytest.raises(TypeError, match="Expected `model` to be a torch.nn.Module, but got str."):
        get_classifier("resnet8")


def test_extract_features_matches_a_hand_written_penultimate_layer():
    model = create_model("resnet8x4", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features, logits = extract_features(model, x)
        h = nn.functional.relu(model.bn1(model.conv1(x)))
        h = model.layer3(model.layer2(model.layer1(h))).mean(dim=(2, 3))
    torch.testing.assert_close(features, h)
    torch.testing.assert_close(logits, model.fc(h))


def test_extract_features_keeps_gradients_and_the_state_dict():
    model = create_model("wrn_16_1", num_classes=10)
    keys = list(model.state_dict())
    features, logits = extract_features(model, torch.randn(2, 3, 32, 32))
    (features.sum() + logits.sum()).backward()
    assert model.conv1.weight.grad is not None
    assert list(model.state_dict()) == keys


def test_extract_features_on_torchvision():
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        features, logits = extract_features(model, torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 512) and logits.shape == (2, 10)


def test_extract_features_removes_the_hook_when_forward_fails():
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(RuntimeError):
        extract_features(model, torch.randn(2, 5, 32, 32))
    assert len(model.fc._forward_pre_hooks) == 0


def test_extract_features_requires_the_classifier_to_run():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return x

    with pytest.raises(RuntimeError, match="to run during forward, but it was not called"):
        extract_features(Skips(), torch.randn(2, 4))


def test_channel_shuffle_matches_a_loop():
    x = torch.randn(2, 12, 3, 3)
    groups, per_group = 3, 4
    expected = torch.empty_like(x)
    for g in range(groups):
        for j in range(per_group):
            expected[:, j * groups + g] = x[:, g * per_group + j]
    torch.testing.assert_close(channel_shuffle(x, groups), expected)


def test_channel_shuffle_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible by `groups`=4, but got 6"):
        channel_shuffle(torch.randn(1, 6, 2, 2), 4)
