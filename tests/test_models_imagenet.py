"""The ImageNet networks (METHODS.md §2.3) against upstream's state dicts and torchvision.

Oracles: the recorded SimKD state dicts, parameter counts and feature shapes in
``tests/fixtures/upstream_models/simkd``, and torchvision's own models, whose (randomly initialised)
weights must load strictly and give the same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from models import imagenet_mobilenetv2, imagenet_shufflenetv2  # noqa: F401  (imports register)
from models.imagenet_resnet import IMAGENET_ALIASES
from models.registry import model_dict, model_info
from tests.fixtures import load_fixture

# upstream record name -> our registry name (only the ImageNet ResNet-50 is renamed, see IMAGENET_ALIASES)
UPSTREAM_TO_OURS = {
    "ResNet18": "ResNet18",
    "ResNet34": "ResNet34",
    "ResNet50": "ResNet50_Imagenet",
    "ResNet10x2": "ResNet10x2",
    "ResNet18x2": "ResNet18x2",
    "ResNet34x2": "ResNet34x2",
    "resnext50_32x4d": "resnext50_32x4d",
    "wrn_50_2": "wrn_50_2",
    "MobileNetV2_Imagenet": "MobileNetV2_Imagenet",
    "ShuffleV2_Imagenet": "ShuffleV2_Imagenet",
}

TORCHVISION_TWINS: dict[str, Callable[..., nn.Module]] = {
    "ResNet18": torchvision.models.resnet18,
    "ResNet34": torchvision.models.resnet34,
    "ResNet50_Imagenet": torchvision.models.resnet50,
    "ResNet101": torchvision.models.resnet101,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "resnext101_32x8d": torchvision.models.resnext101_32x8d,
    "wrn_50_2": torchvision.models.wide_resnet50_2,
    "wrn_101_2": torchvision.models.wide_resnet101_2,
    "MobileNetV2_Imagenet": torchvision.models.mobilenet_v2,
    "ShuffleV2_Imagenet": torchvision.models.shufflenet_v2_x1_0,
}

BOTTLENECK_FEATURES = [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (2048,)]
# Per-sample feature shapes for a 224x224 input where no upstream record exists (or upstream is broken).
EXTRA_FEATURE_SHAPES = {
    "ResNet101": BOTTLENECK_FEATURES,
    "resnext101_32x8d": BOTTLENECK_FEATURES,
    "wrn_101_2": BOTTLENECK_FEATURES,
    "ShuffleV2_Imagenet": [(24, 56, 56), (116, 28, 28), (232, 14, 14), (1024, 7, 7), (1024,)],
}

SHUFFLENET_CONV5_KEYS = [
    "conv5.0.weight",
    "conv5.1.weight",
    "conv5.1.bias",
    "conv5.1.running_mean",
    "conv5.1.running_var",
    "conv5.1.num_batches_tracked",
]


def _upstream_record(upstream_name: str) -> dict:
    return load_fixture(f"upstream_models/simkd/{upstream_name}.json")


def _state_dict_spec(model: nn.Module) -> list[tuple[str, list[int], str]]:
    return [
        (key, list(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    ]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected_feature_shapes(name: str) -> list[tuple[int, ...]]:
    if name in EXTRA_FEATURE_SHAPES:
        return EXTRA_FEATURE_SHAPES[name]
    upstream_name = next(up for up, ours in UPSTREAM_TO_OURS.items() if ours == name)
    record = _upstream_record(upstream_name)
    assert record["feature_shapes_for_input"] == [2, 3, 224, 224]
    return [tuple(shape[1:]) for shape in record["feat_shapes"]]


def _randomise_batch_norms(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine terms, so a skipped BN changes the logits."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)


def test_every_imagenet_network_is_registered_for_imagenet_inputs() -> None:
    expected = set(UPSTREAM_TO_OURS.values()) | set(TORCHVISION_TWINS) | set(EXTRA_FEATURE_SHAPES)
    assert len(expected) == 13
    for name in expected:
        assert name in model_dict
        assert model_info[name].input_kind == "imagenet"
        assert not model_info[name].small_lr


def test_upstream_resnet50_name_is_aliased_to_the_imagenet_network() -> None:
    assert IMAGENET_ALIASES == {"ResNet50": "ResNet50_Imagenet"}
    assert model_info["ResNet50_Imagenet"].input_kind == "imagenet"
    # "ResNet50" stays free for (or taken by) the CIFAR bottleneck network, never an ImageNet one.
    assert "ResNet50" not in model_info or model_info["ResNet50"].input_kind == "cifar"


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAM_TO_OURS))
def test_state_dict_and_param_count_match_upstream(upstream_name: str) -> None:
    record = _upstream_record(upstream_name)
    model = model_dict[UPSTREAM_TO_OURS[upstream_name]](num_classes=record["num_classes"])
    ours = _state_dict_spec(model)
    upstream = [(entry["key"], entry["shape"], entry["dtype"]) for entry in record["state_dict"]]
    if upstream_name == "ShuffleV2_Imagenet":
        # Upstream forgot conv5 (METHODS.md §2.3): our keys are upstream's, in order, plus conv5.
        assert [entry for entry in ours if entry[0] not in SHUFFLENET_CONV5_KEYS] == upstream
        assert [entry[0] for entry in ours if entry not in upstream] == SHUFFLENET_CONV5_KEYS
        assert record["num_params"] == 1_801_420
        assert _num_params(model) == 2_278_604
    else:
        assert ours == upstream
        assert _num_params(model) == record["num_params"]


@pytest.mark.parametrize("name", sorted(set(UPSTREAM_TO_OURS.values()) | set(EXTRA_FEATURE_SHAPES)))
def test_features_shapes_and_classifier_interface(name: str) -> None:
    torch.manual_seed(0)
    num_classes = 10
    model = model_dict[name](num_classes=num_classes).eval()
    classifier = model.get_classifier()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        plain_logits = model(x, preact=True)
        # The embedding is the spatial mean of the last map (MobileNetV2: of the 1x1 head applied
        # to it), and the classifier maps the embedding to the logits.
        last_map = model.features[-1](feats[-2]) if name == "MobileNetV2_Imagenet" else feats[-2]
        torch.testing.assert_close(feats[-1], last_map.mean(dim=(2, 3)))
        torch.testing.assert_close(classifier(feats[-1]), logits)

    assert [tuple(f.shape[1:]) for f in feats] == _expected_feature_shapes(name)
    assert all(f.shape[0] == 2 for f in feats)
    assert logits.shape == (2, num_classes)
    assert torch.equal(plain_logits, logits)
    assert isinstance(classifier, nn.Linear) and classifier.out_features == num_classes

    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList)
    assert not any(isinstance(m, nn.Linear) for m in feat_modules.modules())
    # Feature modules and classifier together hold every parameter of the network.
    covered = {id(p) for p in feat_modules.parameters()} | {id(p) for p in classifier.parameters()}
    assert covered == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", sorted(TORCHVISION_TWINS))
def test_torchvision_weights_load_strictly_and_give_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    reference = TORCHVISION_TWINS[name](num_classes=1000)
    _randomise_batch_norms(reference)
    model = model_dict[name](num_classes=1000)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)  # the final maps are 2x2: cheap, and batch statistics exist

    reference.eval()
    model.eval()
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
    assert torch.isfinite(expected).all() and expected.std() > 0
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)

    # Training mode too: batch statistics, and MobileNetV2's dropout (same random stream).
    reference.train()
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = reference(x)
        torch.manual_seed(1)
        logits = model(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = model_dict["ResNet18"](num_classes=1000)
    _randomise_batch_norms(model)
    model.eval()
    path = tmp_path / "ResNet18_best.pth"
    torch.save({"model": model.state_dict()}, path)

    restored = model_dict["ResNet18"](num_classes=1000)
    restored.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    restored.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
