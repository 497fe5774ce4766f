"""The model registry: ``model_dict`` maps a name to a constructor taking ``num_classes``.

Every network registers itself with :func:`register_model`, which also records the input it
was designed for (``"cifar"``: 32x32, ``"imagenet"``: 224x224) and whether the CIFAR recipe
trains it with the small learning rate 0.01 (METHODS.md §3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the training recipe needs to know about a registered network."""

    name: str
    input_kind: str  # "cifar" (32x32 inputs) or "imagenet" (224x224 inputs)
    small_lr: bool = False  # the CIFAR recipe uses lr 0.01 instead of 0.05 (MobileNet/ShuffleNet)


model_dict: dict[str, Callable[..., nn.Module]] = {}
model_info: dict[str, ModelInfo] = {}


def register_model(name: str, input_kind: str, small_lr: bool = False) -> Callable:
    """Register ``builder(num_classes=...) -> nn.Module`` under ``name``."""
    if input_kind not in ("cifar", "imagenet"):
        raise ValueError(f"input_kind must be 'cifar' or 'imagenet', not {input_kind!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in model_dict:
            raise ValueError(f"model {name!r} is registered twice")
        model_dict[name] = builder
        model_info[name] = ModelInfo(name, input_kind, small_lr)
        return builder

    return decorate
