"""The CIFAR networks of mmrazor's CRD table: wrn_22_4, wrn_28_10 and the four-stage CIFAR ResNets.

No upstream record of them is kept, so the oracles are independent: the parameter count of a
pre-activation WRN from its architecture formula (itself checked against RepDistiller's recorded
WRNs), and torchvision's ImageNet ResNets, whose count differs only by the 7×7 → 3×3 stem.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from models import model_dict
from tests.fixtures import load_fixture


def wrn_parameter_count(depth: int, widen: int, num_classes: int) -> int:
    """Parameters of a pre-activation WRN-depth-widen (Zagoruyko & Komodakis): stem, 3 stages, BN, fc."""
    blocks = (depth - 4) // 6
    total, in_channels = 3 * 16 * 9, 16
    for out_channels in (16 * widen, 32 * widen, 64 * widen):
        for block in range(blocks):
            channels = in_channels if block == 0 else out_channels
            total += 2 * channels + 9 * channels * out_channels + 2 * out_channels + 9 * out_channels ** 2
            total += channels * out_channels if channels != out_channels else 0  # 1×1 projection shortcut
        in_channels = out_channels
    return total + 2 * in_channels + in_channels * num_classes + num_classes


def parameter_count(name: str, num_classes: int) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_dict[name](num_classes=num_classes).parameters())


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"])
def test_the_wrn_formula_gives_the_recorded_upstream_counts(name):
    depth, widen = (int(part) for part in name.split("_")[1:])
    recorded = load_fixture(f"upstream_models/repdistiller/{name}.json")["num_params"]
    assert wrn_parameter_count(depth, widen, 100) == recorded


@pytest.mark.parametrize("name, depth, widen", [("wrn_22_4", 22, 4), ("wrn_28_10", 28, 10)])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_new_wrns_have_the_formula_count(name, depth, widen, num_classes):
    assert parameter_count(name, num_classes) == wrn_parameter_count(depth, widen, num_classes)


def test_wrn_counts_are_the_papers():
    assert round(parameter_count("wrn_28_10", 100) / 1e6, 1) == 36.5  # WRN paper, Table 4
    assert round(parameter_count("wrn_22_4", 100) / 1e6, 1) == 4.3


@pytest.mark.parametrize("name, torchvision_name", [("ResNet18_cifar", "resnet18"), ("ResNet34_cifar", "resnet34"),
                                                   ("ResNet50_cifar", "resnet50")])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_resnets_are_torchvisions_with_a_3x3_stem(name, torchvision_name, num_classes):
    with torch.device("meta"):
        reference = torchvision.models.get_model(torchvision_name, num_classes=num_classes)
    stem_difference = 3 * 64 * (7 * 7 - 3 * 3)
    assert parameter_count(name, num_classes) == sum(p.numel() for p in reference.parameters()) - stem_difference


def test_resnet50_cifar_is_repdistillers_resnet50():
    with torch.device("meta"):
        ours, theirs = model_dict["ResNet50_cifar"](num_classes=100), model_dict["ResNet50"](num_classes=100)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]


FEATURES_32 = {
    "ResNet18_cifar": [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)],
    "ResNet34_cifar": [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)],
    "ResNet50_cifar": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)],
    "wrn_22_4": [(16, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
    "wrn_28_10": [(16, 32, 32), (160, 32, 32), (320, 16, 16), (640, 8, 8), (640,)],
}


@pytest.mark.parametrize("name", sorted(FEATURES_32))
def test_features_of_a_32px_image(name):
    with torch.device("meta"):
        network = model_dict[name](num_classes=100).eval()
        features, logits = network(torch.empty(2, 3, 32, 32), is_feat=True)
    assert [tuple(f.shape[1:]) for f in features] == FEATURES_32[name]
    assert tuple(logits.shape) == (2, 100)


@pytest.mark.parametrize("name", ["ResNet18_cifar", "wrn_22_4"])
def test_bn_before_relu_is_the_last_term_of_each_preact_tap(name):
    """Shifting BN_i's output by δ shifts exactly the i-th pre-activation stage map by δ (OFD's margins)."""
    torch.manual_seed(0)
    network = model_dict[name](num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, _ = network(images, is_feat=True, preact=True)
        post, _ = network(images, is_feat=True)
    assert all((tap < 0).any() for tap in plain[1:-1])
    if name == "ResNet18_cifar":
        assert all((tap >= 0).all() for tap in post[1:-1])  # post-ReLU taps
    for index, bn in enumerate(network.get_bn_before_relu(), start=1):
        handle = bn.register_forward_hook(lambda module, args, output: output + 100.0)
        with torch.no_grad():
            shifted, _ = network(images, is_feat=True, preact=True)
        handle.remove()
        torch.testing.assert_close(shifted[index], plain[index] + 100.0)
