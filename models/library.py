"""Any timm or torchvision classifier as a network of the zoo, through one adapter.

The methods read a network through the feature contract of :mod:`models.feature_net`:
``forward(x, is_feat, preact)`` gives ``[stem, stage maps..., embedding]`` and the logits, and
``get_classifier()`` is the final linear layer that maps the embedding to the logits.
:class:`LibraryNet` gives that contract to a network it does not change:

* **timm** networks through timm's own feature API: ``forward_intermediates`` returns the stage
  maps that ``feature_info`` lists (always ``NCHW``, class and distillation tokens dropped), and
  ``forward_head(pre_logits=True)`` the embedding. Where ``feature_info`` starts with the stem
  (ResNet, EfficientNet, RegNet, MobileNet) that entry is the stem; otherwise the output of the
  model's ``patch_embed`` or ``stem`` module is (ViT, DeiT, Swin, ConvNeXt).
* **torchvision** networks (and any plain classifier registered with ``register_model``) through
  forward hooks. The trunk, the network's modules up to its classifier (top-level ``Sequential``
  containers such as ``features`` opened one level), is probed once at the data set's image
  size: the stem tap is the first module when it is a stem block of its own (else where the first
  resolution ends), one stage tap is where each resolution ends, and the embedding is what the
  last ``nn.Linear`` reads.
* **Vision transformers** (timm ``patch_embed`` models, torchvision ``VisionTransformer``) have
  one stage per block, all at one resolution; ``taps`` of them (default 4), evenly spaced and
  ending at the last block, are the stage maps, each token map reshaped to
  ``[B, C, H/p, W/p]``. Their blocks end in a residual sum with no activation after it, so the
  pre-activation taps (``preact=True``) are the same maps. A library CNN's blocks end inside
  the library's code, so ``preact=True`` is refused there with a usage error.

A checkpoint holds the wrapped network's own state dict under ``model.``, so files written
here and files in the library's own format (torchvision's plain state dicts, timm's
``{'state_dict': ...}``) load into :func:`weights_module` alike.

No model library is imported until a library network is validated or built.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from errors import UsageError
from models.feature_net import FeatureNet
from models.spec import ModelSpec

DEFAULT_TOKEN_TAPS = 4
ADAPTER_ARGS = ("taps",)  # spec arguments the adapter reads itself; never passed to the library
POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d)

# Zoo network -> the torchvision network whose weights it loads strictly, giving the same logits
# (tests/test_models_imagenet.py); --pretrained_t loads them, and torchvision's own files load.
TORCHVISION_TWINS = {
    "ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50_Imagenet": "resnet50", "ResNet101": "resnet101",
    "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x8d": "resnext101_32x8d", "wrn_50_2": "wide_resnet50_2",
    "wrn_101_2": "wide_resnet101_2", "MobileNetV2_Imagenet": "mobilenet_v2", "ShuffleV2_Imagenet": "shufflenet_v2_x1_0",
}
# torchvision names its weight files ``<prefix>-<hash>.pth``; the prefixes of the twins' files.
TORCHVISION_FILE_PREFIXES = {**{tv: ours for ours, tv in TORCHVISION_TWINS.items()},
                             "shufflenetv2_x1": "ShuffleV2_Imagenet"}
_TORCHVISION_FILE = re.compile(r"^(?P<prefix>[a-z0-9_]+)-[0-9a-f]{8,}\.pth$")


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(f"{package} is not installed; pip install {package} to use {package}:<name> models") from None


def check_library_name(spec: ModelSpec, flag: str) -> None:
    """Refuse a library name the library does not know (this imports the library)."""
    name = spec.library_name
    if spec.library == "timm":
        if not _import("timm").is_model(name):
            raise UsageError(f"{flag} {spec.name}: timm has no model {name!r}; list them with "
                             f"python -c \"import timm; print(timm.list_models('*{name[:8]}*'))\"")
        return
    tv_models = _import("torchvision.models")
    if name not in tv_models.list_models(module=tv_models):
        raise UsageError(f"{flag} {spec.name}: torchvision has no classification model {name!r}; list them with "
                         "python -c \"import torchvision; print(torchvision.models.list_models())\"")


def torchvision_file_arch(filename: str) -> str | None:
    """The architecture a torchvision weight file's name gives (``resnet34-b627a593.pth`` → ``ResNet34``).

    A zoo twin when there is one (it also has pre-activation taps); else ``torchvision:<name>``
    when torchvision has a model of that name; else None.
    """
    match = _TORCHVISION_FILE.match(filename)
    if match is None:
        return None
    prefix = match["prefix"]
    if prefix in TORCHVISION_FILE_PREFIXES:
        return TORCHVISION_FILE_PREFIXES[prefix]
    tv_models = _import("torchvision.models")
    return f"torchvision:{prefix}" if prefix in tv_models.list_models(module=tv_models) else None


def _constructor(spec: ModelSpec, pretrained: bool) -> tuple[Callable[..., nn.Module], str]:
    """The library's builder of ``spec`` (weights chosen) and the name of its image-size argument."""
    name = spec.library_name
    if spec.library == "timm":
        timm = _import("timm")
        return (lambda **kwargs: timm.create_model(name, pretrained=pretrained, **kwargs)), "img_size"
    tv_models = _import("torchvision.models")
    weights = "DEFAULT" if pretrained else None
    return (lambda **kwargs: tv_models.get_model(name, weights=weights, **kwargs)), "image_size"


def _create(spec: ModelSpec, build: Callable[..., nn.Module], kwargs: dict[str, Any], size_key: str,
            image_size: int | None) -> nn.Module:
    """Build with ``kwargs``, sized for ``image_size`` where the model takes a size argument."""
    if image_size is not None and size_key not in kwargs:
        try:
            return build(**kwargs, **{size_key: image_size})
        except TypeError as error:
            if size_key not in str(error):
                raise UsageError(f"{spec.text}: {error}") from None
    try:
        return build(**kwargs)
    except TypeError as error:
        raise UsageError(f"{spec.text}: {error}; check the model arguments") from None


def build_library_network(spec: ModelSpec, num_classes: int, image_size: int | None,
                          pretrained: bool = False) -> LibraryNet:
    """``timm:<name>`` or ``torchvision:<name>`` with ``num_classes`` outputs, wrapped in :class:`LibraryNet`.

    ``pretrained`` loads the library's weights (it downloads them once): the network keeps the
    library's classifier, which must have ``num_classes`` outputs; torchvision's pretrained
    networks keep their own input size.
    """
    kwargs = {key: value for key, value in spec.args if key not in ADAPTER_ARGS}
    build, size_key = _constructor(spec, pretrained)
    if not pretrained:
        kwargs["num_classes"] = num_classes
    sized = image_size if not (pretrained and spec.library == "torchvision") else None
    model = _create(spec, build, kwargs, size_key, sized)
    return LibraryNet(model, spec.text, image_size or 224, num_classes, **_adapter_kwargs(spec))


def _adapter_kwargs(spec: ModelSpec) -> dict[str, Any]:
    return {key: value for key, value in spec.args if key in ADAPTER_ARGS}


def wrap_plain_network(network: nn.Module, spec: ModelSpec, image_size: int, num_classes: int) -> LibraryNet:
    """A registered classifier that does not expose the feature contract itself, given it by hooks."""
    return LibraryNet(network, spec.text, image_size, num_classes, **_adapter_kwargs(spec))


def load_torchvision_twin_weights(network: nn.Module, name: str) -> None:
    """Load torchvision's pretrained weights into the zoo network ``name`` (its twin, same layout)."""
    if name not in TORCHVISION_TWINS:
        raise UsageError(f"--pretrained_t: {name} has no library weights; pass a timm:<name> or torchvision:<name> "
                         f"teacher, or one of {', '.join(TORCHVISION_TWINS)}")
    weights = _import("torchvision.models").get_model_weights(TORCHVISION_TWINS[name]).DEFAULT
    classes = len(weights.meta["categories"])
    if classes != network.get_classifier().out_features:
        raise UsageError(f"--pretrained_t: torchvision's {TORCHVISION_TWINS[name]} predicts {classes} classes, "
                         f"the data set has {network.get_classifier().out_features}")
    network.load_state_dict(weights.get_state_dict(progress=True), strict=True)


def weights_module(network: nn.Module) -> nn.Module:
    """The module a weight file holds the state dict of: the wrapped network of a :class:`LibraryNet`."""
    return network.model if isinstance(network, LibraryNet) else network


def evenly_spaced(count: int, taps: int) -> list[int]:
    """``taps`` indices of ``count`` blocks, evenly spaced and ending at the last (12, 4 → 2, 5, 8, 11)."""
    taps = min(taps, count)
    return [round((i + 1) * count / taps) - 1 for i in range(taps)]


def _contains(module: nn.Module, target: nn.Module) -> bool:
    return any(m is target for m in module.modules())


def _final_linear(model: nn.Module, spec: str) -> nn.Linear:
    """The library's classifier: timm's ``get_classifier()``, else the last ``nn.Linear`` of the network."""
    get = getattr(model, "get_classifier", None)
    classifier = get() if callable(get) else next((m for m in reversed(list(model.modules()))
                                                   if isinstance(m, nn.Linear)), None)
    if not isinstance(classifier, nn.Linear):
        raise UsageError(f"{spec}: its classifier is {type(classifier).__name__}, not one linear layer, so it "
                         "has no embedding for the methods to read; pick a model with a single linear head")
    return classifier


def _own_parameters(module: nn.Module) -> nn.Module | None:
    """A holder of the parameters set on ``module`` itself (a ViT's ``cls_token``, ``pos_embed``), or None."""
    own = list(module.named_parameters(recurse=False))
    if not own:
        return None
    holder = nn.Module()
    for name, parameter in own:
        holder.register_parameter(name, parameter)
    return holder


def modules_without(module: nn.Module, excluded: nn.Module) -> list[nn.Module]:
    """Modules that together hold every parameter of ``module`` except those of ``excluded``."""
    if not _contains(module, excluded):
        return [module]
    own = _own_parameters(module)
    parts = [] if own is None else [own]
    for child in module.children():
        if child is not excluded:
            parts += modules_without(child, excluded)
    return parts


class _Capture:
    """Forward hooks that keep chosen modules' outputs (or inputs) during one feature forward only.

    The hooks are bound methods of this object, so a deep copy of the network hooks into its own copy.
    """

    def __init__(self) -> None:
        self.active = False
        self.outputs: dict[str, Tensor] = {}

    def watch_output(self, module: nn.Module, key: str) -> None:
        module.register_forward_hook(partial(self._keep_output, key))

    def watch_input(self, module: nn.Module, key: str) -> None:
        module.register_forward_pre_hook(partial(self._keep_input, key))

    def _keep_output(self, key: str, _module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        if self.active:
            self.outputs[key] = output

    def _keep_input(self, key: str, _module: nn.Module, inputs: tuple) -> None:
        if self.active:
            self.outputs[key] = inputs[0]

    @contextmanager
    def __call__(self) -> Iterator[dict[str, Tensor]]:
        outputs = self.outputs = {}
        self.active = True
        try:
            yield outputs
        finally:
            self.active, self.outputs = False, {}


def token_map(tokens: Tensor, height: int, prefix_tokens: int = 0, channels_last: bool = False) -> Tensor:
    """A stage's tokens as an ``NCHW`` map: ``[B, prefix + h·w, C]`` (or ``NHWC``) → ``[B, C, h, w]``.

    ``height`` is the map's height (image height over patch size, rounded up); class and
    distillation tokens (the first ``prefix_tokens``) are dropped.
    """
    if tokens.dim() == 4:
        return tokens.permute(0, 3, 1, 2) if channels_last else tokens
    tokens = tokens[:, prefix_tokens:]
    batch, count, channels = tokens.shape
    if count % height:
        raise ValueError(f"{count} tokens do not form a map of height {height}")
    return tokens.transpose(1, 2).reshape(batch, channels, height, count // height)


def _grid_height(image_height: int, patch_size: int | Sequence[int]) -> int:
    patch = patch_size if isinstance(patch_size, int) else patch_size[0]
    return -(-image_height // patch)


class _TimmTaps:
    """Stage maps from timm's ``forward_intermediates``; the stem from a hook where ``feature_info`` lists none."""

    def __init__(self, model: nn.Module, spec: str, taps: int) -> None:
        if not callable(getattr(model, "forward_intermediates", None)):
            raise UsageError(f"{spec} has no forward_intermediates (timm's feature API), so its stage maps are "
                             "unknown; pick another timm model")
        info = list(model.feature_info)
        self.tokens = isinstance(getattr(model, "patch_embed", None), nn.Module)
        stem_name = next((name for name in ("patch_embed", "stem") if isinstance(getattr(model, name, None),
                                                                                   nn.Module)), None)
        self.stem = getattr(model, stem_name) if stem_name and info[0]["module"] != stem_name else None
        isotropic = len({entry["reduction"] for entry in info}) == 1
        self.indices = evenly_spaced(len(info), taps) if isotropic else list(range(len(info)))
        if self.stem is None and isotropic:
            self.indices = sorted({0, *self.indices})
        self.capture = _Capture()
        if self.stem is not None:
            self.capture.watch_output(self.stem, "stem")

    def _stem_map(self, output: Tensor, images: Tensor) -> Tensor:
        fmt = getattr(self.stem, "output_fmt", None)
        channels_last = getattr(fmt, "value", fmt) == "NHWC"
        height = _grid_height(images.shape[-2], getattr(self.stem, "patch_size", 1))
        return token_map(output, height, channels_last=channels_last)

    def features(self, model: nn.Module, classifier: nn.Linear, images: Tensor) -> tuple[list[Tensor], Tensor]:
        with self.capture() as captured:
            final, maps = model.forward_intermediates(images, indices=self.indices, output_fmt="NCHW")
        maps = list(maps)
        stem = maps.pop(0) if self.stem is None else self._stem_map(captured["stem"], images)
        embedding = model.forward_head(final, pre_logits=True)
        return [stem, *maps, embedding], classifier(embedding)


def _trunk(network: nn.Module, classifier: nn.Linear) -> list[nn.Module]:
    """The modules before the head, in order: top-level ``Sequential`` containers and any container of
    the classifier are opened; the head starts at the first pooling layer or at the classifier."""

    def walk(parent: nn.Module, top: bool) -> Iterator[nn.Module | None]:
        for child in parent.children():
            if child is classifier or isinstance(child, POOLS):
                yield None
            elif _contains(child, classifier) or (top and isinstance(child, nn.Sequential)):
                yield from walk(child, top=False)
            else:
                yield child

    trunk: list[nn.Module] = []
    for module in walk(network, top=True):
        if module is None:
            break
        trunk.append(module)
    return trunk


@torch.no_grad()
def _probe_resolutions(model: nn.Module, trunk: Sequence[nn.Module], image_size: int) -> list[tuple[int, tuple]]:
    """``(trunk index, spatial size)`` of each 4-D trunk output, in the order one forward computes them."""
    seen: list[tuple[int, tuple]] = []
    handles = []
    for index, module in enumerate(trunk):
        def hook(_module: nn.Module, _inputs: tuple, output: Any, index: int = index) -> None:
            if isinstance(output, Tensor) and output.dim() == 4 and index not in {i for i, _ in seen}:
                seen.append((index, tuple(output.shape[-2:])))
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen


class _HookTaps:
    """Stem, stage and embedding taps by forward hooks (torchvision and plain classifiers)."""

    def __init__(self, model: nn.Module, spec: str, classifier: nn.Linear, image_size: int, taps: int) -> None:
        self.capture = _Capture()
        self.prefix_tokens = 0
        encoder = getattr(model, "encoder", None)
        if isinstance(getattr(model, "conv_proj", None), nn.Conv2d) and hasattr(encoder, "layers"):
            self.tokens, self.patch_size = True, model.patch_size  # torchvision's VisionTransformer
            self.prefix_tokens = 1  # the class token
            stem, stages = model.conv_proj, [encoder.layers[i] for i in evenly_spaced(len(encoder.layers), taps)]
        else:
            if type(model).__name__ == "SwinTransformer":
                raise UsageError(f"{spec}: torchvision's Swin keeps its stages channels-last; use timm:swin_* instead")
            self.tokens = False
            stem, stages = self._resolution_taps(model, spec, classifier, image_size)
        self.capture.watch_output(stem, "stem")
        for index, stage in enumerate(stages):
            self.capture.watch_output(stage, f"stage{index}")
        self.capture.watch_input(classifier, "embedding")
        self.num_stages = len(stages)

    @staticmethod
    def _resolution_taps(model: nn.Module, spec: str, classifier: nn.Linear,
                         image_size: int) -> tuple[nn.Module, list[nn.Module]]:
        """The stem: the first trunk module if it is a block of its own (torchvision's ``Conv2dNormActivation``,
        RegNet's ``stem``), else where the first resolution ends; a stage: where each resolution ends."""
        trunk = _trunk(model, classifier)
        runs: list[tuple[tuple, int]] = []  # (spatial size, index of the last trunk module at it)
        for index, size in _probe_resolutions(model, trunk, image_size):
            if runs and runs[-1][0] == size:
                runs[-1] = (size, index)
            else:
                runs.append((size, index))
        stem_block = next(trunk[0].children(), None) is not None
        stem = trunk[0] if stem_block else trunk[runs[0][1]]
        stages = [trunk[index] for _, index in (runs if stem_block else runs[1:]) if trunk[index] is not stem]
        if not stages:
            raise UsageError(f"{spec}: found no stage maps before its classifier at {image_size}×{image_size} inputs")
        return stem, stages

    def features(self, model: nn.Module, classifier: nn.Linear, images: Tensor) -> tuple[list[Tensor], Tensor]:
        with self.capture() as captured:
            logits = model(images)
        stages = [captured[f"stage{i}"] for i in range(self.num_stages)]
        if self.tokens:
            height = _grid_height(images.shape[-2], self.patch_size)
            stages = [token_map(stage, height, self.prefix_tokens) for stage in stages]
        return [captured["stem"], *stages, captured["embedding"]], logits


class LibraryNet(FeatureNet):
    """A library (or plain) classifier ``model`` with the zoo's feature contract; ``model`` itself is untouched.

    ``spec`` names it in messages; ``image_size`` is the input size the hook taps are found at;
    ``num_classes`` is checked against the classifier; ``taps`` is the number of a vision
    transformer's blocks tapped as stages.
    """

    def __init__(self, model: nn.Module, spec: str, image_size: int, num_classes: int,
                 taps: int = DEFAULT_TOKEN_TAPS) -> None:
        super().__init__()
        if not isinstance(taps, int) or taps < 1:
            raise UsageError(f"{spec}: taps must be a positive integer, got {taps!r}")
        if getattr(model, "aux_logits", False):
            raise UsageError(f"{spec} returns auxiliary logits in training; pass the model argument aux_logits=false")
        self.model = model
        self.spec = spec
        classifier = _final_linear(model, spec)
        self._classifier = (classifier,)  # a tuple: the layer stays registered once, under ``model``
        if classifier.out_features != num_classes:
            raise UsageError(f"{spec} predicts {classifier.out_features} classes but the data set has {num_classes}; "
                             "pretrained library weights keep the library's classifier")
        is_timm = type(model).__module__.startswith("timm.")
        self._taps = (_TimmTaps(model, spec, taps) if is_timm
                      else _HookTaps(model, spec, classifier, image_size, taps))

    @property
    def honours_preact(self) -> bool:
        """Whether the stage taps are also the pre-activation taps (vision transformers)."""
        return self._taps.tokens

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> Tensor | tuple[list[Tensor], Tensor]:
        """The library's logits, or ``(features, logits)`` with ``is_feat``."""
        if not is_feat:
            return self.model(x)
        if preact and not self.honours_preact:
            raise UsageError(f"{self.spec} has no pre-activation taps: its stages end in an activation inside the "
                             "library's blocks, and this method reads the values before it (preact); use a zoo "
                             "network or a vision transformer on that side")
        return self._taps.features(self.model, self.get_classifier(), x)

    def extract_features(self, x: Tensor, preact: bool = False) -> list[Tensor]:
        return self.forward(x, is_feat=True, preact=preact)[0]

    def get_classifier(self) -> nn.Linear:
        return self._classifier[0]

    def get_feat_modules(self) -> nn.ModuleList:
        """Every part of the network but its classifier (AB and FSP train these in their init stage)."""
        return nn.ModuleList(modules_without(self.model, self.get_classifier()))

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError(f"{self.spec} is a library network; its BatchNorms before the stage activations "
                                  "are not known")
