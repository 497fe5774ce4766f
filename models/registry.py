"""The model registry: ``model_dict`` maps a name to a constructor taking ``num_classes``.

Every network registers itself with :func:`register_model`, which also records the input it
was designed for (``"cifar"``: 32x32, ``"imagenet"``: 224x224) and whether the CIFAR recipe
trains it with the small learning rate 0.01 (METHODS.md §3.2).

The ImageNet families build on torchvision, whose import takes seconds (it pulls in
``torch._dynamo``), so they are not imported with the package: :data:`LAZY_IMAGENET_FAMILIES` names
their networks, which stand in ``model_dict`` and ``model_info`` from the start as
:class:`LazyBuilder` entries. Building one imports its family module, whose own
:func:`register_model` calls then take the place of the stand-ins. So ``--help``, a usage error
or a CIFAR run never waits for torchvision, and every caller still sees every name.

:func:`build_model` is the one way to build a network by name: a registry name, or a library
name (``timm:<name>``, ``torchvision:<name>``; models/library.py), with constructor arguments
(models/spec.py). A registered classifier that does not expose the feature contract itself gets
it from the same adapter as the library networks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from errors import UsageError
from models import library
from models.spec import ModelSpec, parse_spec


@dataclass(frozen=True)
class ModelInfo:
    """What the training recipe needs to know about a registered network."""

    name: str
    input_kind: str  # "cifar" (32x32 inputs) or "imagenet" (224x224 inputs)
    small_lr: bool = False  # the CIFAR recipe uses lr 0.01 instead of 0.05 (MobileNet/ShuffleNet)


@dataclass(frozen=True)
class LazyBuilder:
    """The ``model_dict`` entry of a network whose family ``module`` is not imported yet.

    Calling it imports the module, which registers the real constructor in its place, and
    builds the network with that constructor.
    """

    info: ModelInfo
    module: str

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        return resolve_builder(self.info.name)(*args, **kwargs)


# Family module -> the networks it registers, imported on the first build of one of them;
# tests/test_startup.py checks each list against what its module registers.
LAZY_IMAGENET_FAMILIES: dict[str, tuple[str, ...]] = {
    "models.imagenet_mobilenetv2": ("MobileNetV2_Imagenet",),
    "models.imagenet_resnet": (
        "ResNet18", "ResNet34", "ResNet50_Imagenet", "ResNet101", "ResNet10x2", "ResNet18x2", "ResNet34x2",
        "resnext50_32x4d", "resnext101_32x8d", "wrn_50_2", "wrn_101_2",
    ),
    "models.imagenet_shufflenetv2": ("ShuffleV2_Imagenet",),
}

# Upstream ImageNet registry name -> our registry name, for names taken by a CIFAR network
# (see models/imagenet_resnet.py); the options layer translates them with --dataset imagenet.
IMAGENET_ALIASES: dict[str, str] = {"ResNet50": "ResNet50_Imagenet"}

model_dict: dict[str, Callable[..., nn.Module]] = {}
model_info: dict[str, ModelInfo] = {}
# Every stand-in ever declared, kept after its module has replaced it in model_dict.
lazy_builders: dict[str, LazyBuilder] = {}


def _check_input_kind(input_kind: str) -> None:
    if input_kind not in ("cifar", "imagenet"):
        raise ValueError(f"input_kind must be 'cifar' or 'imagenet', not {input_kind!r}")


def declare_lazy_family(module: str, names: Iterable[str], input_kind: str, small_lr: bool = False) -> None:
    """List the networks ``names`` of family ``module`` in the registry without importing it."""
    _check_input_kind(input_kind)
    for name in names:
        if name in model_dict:
            raise ValueError(f"model {name!r} is registered twice")
        stand_in = LazyBuilder(ModelInfo(name, input_kind, small_lr), module)
        model_dict[name] = lazy_builders[name] = stand_in
        model_info[name] = stand_in.info


def resolve_builder(name: str) -> Callable[..., nn.Module]:
    """The real constructor of ``name``, importing its family module first if it is not yet."""
    builder = model_dict[name]
    if isinstance(builder, LazyBuilder):
        importlib.import_module(builder.module)
        builder = model_dict[name]
        if isinstance(builder, LazyBuilder):
            raise RuntimeError(f"{builder.module} does not register the model {name!r} declared for it")
    return builder


def _check_replaces_stand_in(name: str, info: ModelInfo, builder: Callable[..., nn.Module]) -> None:
    """Refuse a second registration of ``name``, unless it is the one its stand-in promised."""
    stand_in = model_dict.get(name)
    if not isinstance(stand_in, LazyBuilder):
        if stand_in is not None:
            raise ValueError(f"model {name!r} is registered twice")
        return
    module = getattr(builder, "__module__", None)
    if module != stand_in.module:
        raise ValueError(f"model {name!r} is declared for {stand_in.module} but registered by {module}")
    if info != stand_in.info:
        raise ValueError(f"model {name!r} is declared as {stand_in.info} but registers as {info}")


def register_model(name: str, input_kind: str, small_lr: bool = False) -> Callable:
    """Register ``builder(num_classes=...) -> nn.Module`` under ``name``."""
    _check_input_kind(input_kind)
    info = ModelInfo(name, input_kind, small_lr)

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _check_replaces_stand_in(name, info, builder)
        model_dict[name] = builder
        model_info[name] = info
        return builder

    return decorate


def _declare_imagenet_families() -> None:
    for module, names in LAZY_IMAGENET_FAMILIES.items():
        declare_lazy_family(module, names, input_kind="imagenet")


_declare_imagenet_families()


# The input size of each input kind (the ModelInfo contract above).
INPUT_SIZES = {"cifar": 32, "imagenet": 224}


def uses_small_lr(spec_text: str) -> bool:
    """Whether the CIFAR recipe trains ``spec_text`` at lr 0.01 (registered MobileNets/ShuffleNets only)."""
    spec = parse_spec(spec_text)
    return spec.library is None and model_info[spec.name].small_lr


def _exposes_features(network: nn.Module) -> bool:
    """Whether a registered network implements the feature contract itself (models/feature_net.py)."""
    return all(callable(getattr(network, method, None)) for method in ("get_classifier", "get_feat_modules"))


def _build_registered(spec: ModelSpec, num_classes: int) -> nn.Module:
    kwargs = {key: value for key, value in spec.args if key not in library.ADAPTER_ARGS}
    try:
        return model_dict[spec.name](num_classes=num_classes, **kwargs)
    except TypeError as error:
        if not spec.args:
            raise
        raise UsageError(f"{spec.text}: {error}; check the model arguments") from None


def build_model(spec_text: str, num_classes: int, image_size: int | None = None,
                pretrained: bool = False) -> nn.Module:
    """The network ``spec_text`` names, with ``num_classes`` outputs, sized for ``image_size`` inputs.

    ``spec_text`` is a resolved name (``helper.options.resolve_model``): a registry name or a
    ``timm:``/``torchvision:`` name, either with ``@key=value,...`` constructor arguments.
    ``pretrained`` loads the library's weights (for a registry network: its torchvision twin's).
    """
    spec = parse_spec(spec_text)
    if spec.library is not None:
        return library.build_library_network(spec, num_classes, image_size, pretrained)
    network = _build_registered(spec, num_classes)
    if pretrained:
        library.load_torchvision_twin_weights(network, spec.name)
    if _exposes_features(network):
        return network
    size = image_size or INPUT_SIZES[model_info[spec.name].input_kind]
    return library.wrap_plain_network(network, spec, size, num_classes)
