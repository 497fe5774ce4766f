"""Model zoo: CIFAR and ImageNet networks that expose their intermediate features.

The CIFAR families register on import; the ImageNet ones (which need torchvision) are listed
by the registry and imported when one of their networks is first built (models/registry.py).
"""

from models import (  # noqa: F401  (importing a family registers its networks)
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from models.registry import IMAGENET_ALIASES, ModelInfo, model_dict, model_info, register_model

__all__ = ["IMAGENET_ALIASES", "ModelInfo", "model_dict", "model_info", "register_model"]
