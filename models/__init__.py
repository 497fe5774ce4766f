"""Model zoo: CIFAR and ImageNet networks that expose their intermediate features."""

from models import (  # noqa: F401  (importing a family registers its networks)
    imagenet_mobilenetv2,
    imagenet_resnet,
    imagenet_shufflenetv2,
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from models.registry import ModelInfo, model_dict, model_info, register_model

__all__ = ["ModelInfo", "model_dict", "model_info", "register_model"]
