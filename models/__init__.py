"""Model zoo: CIFAR and ImageNet networks that expose their intermediate features.

The CIFAR families register on import; the ImageNet ones (which need torchvision) are listed
by the registry and imported when one of their networks is first built (models/registry.py).
A file of your own dropped into this folder registers its networks (``@register_model``) on
import like the families, without being listed here; timm and torchvision networks need no file
(``timm:<name>``, ``torchvision:<name>``; models/library.py).
"""

import importlib
import pkgutil

from models import (  # noqa: F401  (importing a family registers its networks)
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from models.registry import (
    IMAGENET_ALIASES,
    LAZY_IMAGENET_FAMILIES,
    ModelInfo,
    build_model,
    model_dict,
    model_info,
    register_model,
)

for _module in pkgutil.iter_modules(__path__):
    if f"{__name__}.{_module.name}" not in LAZY_IMAGENET_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["IMAGENET_ALIASES", "ModelInfo", "build_model", "model_dict", "model_info", "register_model"]
