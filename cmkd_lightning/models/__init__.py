"""Model zoo: CIFAR-100 and ImageNet classifiers with the state_dict layout of the published KD checkpoints.

Build models with :func:`create_model` (canonical names from :func:`list_models`, the community's spellings
such as ``MobileNetV2`` or ``ShuffleV1`` from :func:`model_aliases`), reach penultimate features with
:func:`extract_features`, load community checkpoints with :func:`cmkd_lightning.checkpoint.load_weights`.
"""

from cmkd_lightning.models._factory import (
    MODEL_ALIASES,
    MODELS,
    create_model,
    freeze,
    list_models,
    model_aliases,
    resolve_model_name,
)
from cmkd_lightning.models._features import (
    extract_features,
    extract_named_features,
    feature_hooks,
    feature_layers,
    get_classifier,
    margin_layers,
)
from cmkd_lightning.models.mobilenetv1 import MobileNetV1
from cmkd_lightning.models.mobilenetv2 import MobileNetV2Cifar
from cmkd_lightning.models.resnet50_cifar import CifarResNetBottleneck
from cmkd_lightning.models.resnet_cifar import CifarResNet
from cmkd_lightning.models.shufflenetv1 import ShuffleNetV1
from cmkd_lightning.models.shufflenetv2 import ShuffleNetV2
from cmkd_lightning.models.vgg import VGG
from cmkd_lightning.models.wrn import WideResNet

__all__ = [
    "MODELS",
    "MODEL_ALIASES",
    "VGG",
    "CifarResNet",
    "CifarResNetBottleneck",
    "MobileNetV1",
    "MobileNetV2Cifar",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WideResNet",
    "create_model",
    "extract_features",
    "extract_named_features",
    "feature_hooks",
    "feature_layers",
    "freeze",
    "get_classifier",
    "list_models",
    "margin_layers",
    "model_aliases",
    "resolve_model_name",
]
