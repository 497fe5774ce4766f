"""The CIFAR networks against the upstream facts in ``tests/fixtures/upstream_models``.

Each json there was written by running an upstream constructor (RepDistiller or SimKD) on a
2×3×32×32 input: it lists the exact state-dict keys, shapes and dtypes, the parameter count and
the feature shapes. Matching them means the released ``{'model': state_dict}`` checkpoints load
strictly and every distiller sees the features it was designed for.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from models import model_dict, model_info
from models.blocks import channel_shuffle
from models.mobilenetv2 import MobileNetV2
from models.resnet import ResNet
from models.resnetv2 import BottleneckResNet
from models.shufflenetv1 import ShuffleNetV1
from models.shufflenetv2 import ShuffleNetV2
from models.vgg import VGG
from models.wrn import WideResNet
from tests.fixtures import FIXTURES, load_fixture

UPSTREAM_MODELS = "upstream_models"
CIFAR_INPUT = [2, 3, 32, 32]


def _load_cifar_specs() -> list[dict]:
    specs = []
    for upstream in ("repdistiller", "simkd"):
        for path in sorted((FIXTURES / UPSTREAM_MODELS / upstream).glob("*.json")):
            spec = dict(load_fixture(f"{UPSTREAM_MODELS}/{upstream}/{path.name}"))
            if spec["feature_shapes_for_input"] == CIFAR_INPUT:
                spec["id"] = f"{upstream}/{spec['name']}"
                specs.append(spec)
    return specs


SPECS = _load_cifar_specs()
SPEC_PARAMS = [pytest.param(spec, id=spec["id"]) for spec in SPECS]

# RepDistiller's get_feat_modules lists (METHODS.md §2.1), without the classifier.
FEAT_MODULE_NAMES = {
    ResNet: ["conv1", "bn1", "relu", "layer1", "layer2", "layer3"],
    BottleneckResNet: ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"],
    WideResNet: ["conv1", "block1", "block2", "block3"],
    VGG: ["block0", "pool0", "block1", "pool1", "block2", "pool2", "block3", "pool3", "block4", "pool4"],
    MobileNetV2: ["conv1", "blocks"],
    ShuffleNetV1: ["conv1", "bn1", "layer1", "layer2", "layer3"],
    ShuffleNetV2: ["conv1", "bn1", "layer1", "layer2", "layer3"],
}
# Families whose stage taps are post-ReLU (so never negative without preact).
POST_RELU_TAPS = (ResNet, BottleneckResNet, VGG, ShuffleNetV1, ShuffleNetV2)


pytestmark = pytest.mark.usefixtures("single_thread")


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine parameters and running statistics, so that eval-mode
    outputs depend on them (a buffer that failed to load would then change the logits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))


@functools.cache
def _built(name: str, num_classes: int) -> nn.Module:
    """One eval-mode instance per network, shared by the read-only tests below."""
    torch.manual_seed(0)
    model = model_dict[name](num_classes=num_classes)
    _randomize_batchnorm(model)
    return model.eval()


@functools.cache
def _images(height: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, height, height, generator=torch.Generator().manual_seed(1))


# mmrazor's CIFAR networks, for which no upstream record exists: tests/test_models_mmrazor.py checks them.
WITHOUT_UPSTREAM_RECORD = {"wrn_22_4", "wrn_28_10", "ResNet18_cifar", "ResNet34_cifar", "ResNet50_cifar"}


def test_upstream_records_cover_every_cifar_network():
    assert len(SPECS) >= 39, f"upstream model records missing or incomplete: {FIXTURES / UPSTREAM_MODELS}"
    registered = {name for name, info in model_info.items() if info.input_kind == "cifar"} - WITHOUT_UPSTREAM_RECORD
    assert registered == {spec["name"] for spec in SPECS}
    small_lr = {name for name in registered if model_info[name].small_lr}
    assert small_lr == {"MobileNetV2", "MobileNetV2_1_0", "ShuffleV1", "ShuffleV2", "ShuffleV2_1_5"}


@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_state_dict_matches_upstream(spec):
    model = _built(spec["name"], spec["num_classes"])
    got = [(key, list(value.shape), str(value.dtype).removeprefix("torch."))
           for key, value in model.state_dict().items()]
    expected = [(entry["key"], entry["shape"], entry["dtype"]) for entry in spec["state_dict"]]
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == spec["num_params"]


@pytest.mark.parametrize("spec", SPEC_PARAMS)
@torch.no_grad()
def test_features_and_logits(spec):
    model = _built(spec["name"], spec["num_classes"])
    features, logits = model(_images(), is_feat=True)
    assert isinstance(features, list)
    assert [list(f.shape) for f in features] == spec["feat_shapes"]
    assert list(logits.shape) == [2, spec["num_classes"]]
    assert torch.isfinite(logits).all()
    # The embedding is what the classifier reads, and the plain call gives the same logits.
    torch.testing.assert_close(model.get_classifier()(features[-1]), logits)
    torch.testing.assert_close(model(_images()), logits)


@pytest.mark.parametrize("spec", SPEC_PARAMS)
@torch.no_grad()
def test_preact_features(spec):
    model = _built(spec["name"], spec["num_classes"])
    features, logits = model(_images(), is_feat=True)
    preact_features, preact_logits = model(_images(), is_feat=True, preact=True)
    assert [list(f.shape) for f in preact_features] == spec["feat_shapes"]
    torch.testing.assert_close(preact_logits, logits)
    torch.testing.assert_close(preact_features[0], features[0])  # the stem tap never changes
    torch.testing.assert_close(preact_features[-1], features[-1])  # nor does the embedding
    stage_taps, preact_taps = features[1:-1], preact_features[1:-1]
    if isinstance(model, MobileNetV2):  # ignores preact: its stages end in a linear BN
        for tap, preact_tap in zip(stage_taps, preact_taps):
            torch.testing.assert_close(preact_tap, tap)
        return
    for tap, preact_tap in zip(stage_taps, preact_taps):
        assert not torch.allclose(preact_tap, tap)
        assert (preact_tap < 0).any()
        if isinstance(model, POST_RELU_TAPS):
            assert (tap >= 0).all()


@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_classifier_and_feature_modules(spec):
    model = _built(spec["name"], spec["num_classes"])
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert classifier.out_features == spec["num_classes"]
    assert classifier.in_features == spec["feat_shapes"][-1][1]
    assert classifier is [m for m in model.modules() if isinstance(m, nn.Linear)][-1]

    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList)
    expected = [getattr(model, name) for name in FEAT_MODULE_NAMES[type(model)]]
    assert [id(m) for m in feat_modules] == [id(m) for m in expected]
    assert all(classifier is not m for module in feat_modules for m in module.modules())


@pytest.mark.parametrize("name", ["resnet8", "resnet14x2", "ResNet50", "wrn_16_2", "vgg8",
                                  "MobileNetV2", "ShuffleV1", "ShuffleV2"])
@torch.no_grad()
def test_checkpoint_round_trip(name, tmp_path):
    source = _built(name, 100)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    torch.manual_seed(123)  # a different initialisation from the source's
    fresh = model_dict[name](num_classes=100)
    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], strict=True)
    fresh.eval()
    assert torch.equal(fresh(_images()), source(_images()))


def test_wrn_preact_calls_batchnorms_twice_in_train_mode():
    """RepDistiller's WRN computes its preact taps by calling three BNs a second time
    (METHODS.md §5 item 12); in train mode their statistics are updated twice per step."""
    model = model_dict["wrn_16_1"](num_classes=10).train()
    second_use = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
    other = model.block1.layer[0].bn1
    model(_images(), is_feat=True)
    assert [bn.num_batches_tracked.item() for bn in [*second_use, other]] == [1, 1, 1, 1]
    model(_images(), is_feat=True, preact=True)
    assert [bn.num_batches_tracked.item() for bn in [*second_use, other]] == [3, 3, 3, 2]
    model(_images(), preact=True)  # without is_feat, preact changes nothing
    assert [bn.num_batches_tracked.item() for bn in [*second_use, other]] == [4, 4, 4, 3]


@torch.no_grad()
def test_vgg_pools_before_last_block_only_for_64px_inputs():
    model = _built("vgg8", 100)
    small = [f.shape[-1] for f in model(_images(32), is_feat=True)[0][:-1]]
    large = [f.shape[-1] for f in model(_images(64), is_feat=True)[0][:-1]]
    assert small == [32, 16, 8, 4, 4]
    assert large == [64, 32, 16, 8, 4]


def test_shuffle_v2_preact_tap_is_not_shuffled():
    """The ShuffleV2 preact tap is concat(kept half, last BN) before the channel shuffle
    (METHODS.md §5 item 15): ReLU of it, shuffled, is the ordinary tap."""
    model = _built("ShuffleV2", 100)
    with torch.no_grad():
        features, _ = model(_images(), is_feat=True)
        preact_features, _ = model(_images(), is_feat=True, preact=True)
    for tap, preact_tap in zip(features[1:-1], preact_features[1:-1]):
        torch.testing.assert_close(channel_shuffle(preact_tap.relu(), 2), tap)
