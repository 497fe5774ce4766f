"""The library adapter (models/library.py): timm, torchvision and plain networks with the feature contract.

Each network's taps are checked against the network run by hand, module by module (the oracle
does not go through the adapter), and every teacher-file format against the source network's
logits.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from errors import UsageError
from helper.teacher import build_teacher, read_teacher
from models import build_model, model_dict, model_info, register_model
from models.library import LibraryNet, evenly_spaced, token_map

VIT = "timm:vit_tiny_patch16_224@depth=8,embed_dim=32,num_heads=2,patch_size=4"


pytestmark = pytest.mark.usefixtures("single_thread")


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _randomise_batch_norms(network: nn.Module) -> None:
    """Non-trivial BN statistics, so that a wrongly loaded or skipped BN changes the logits."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))


def _assert_contract(network: LibraryNet, features: list[torch.Tensor], logits: torch.Tensor, x: torch.Tensor) -> None:
    """The embedding is what the classifier reads, and the plain call gives the library's own logits."""
    torch.testing.assert_close(network.get_classifier()(features[-1]), logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(network(x), logits, rtol=0, atol=0)
    torch.testing.assert_close(network.model(x), logits, rtol=0, atol=0)


def test_evenly_spaced_block_taps_end_at_the_last_block():
    assert evenly_spaced(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced(8, 4) == [1, 3, 5, 7]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced(2, 4) == [0, 1]
    assert evenly_spaced(12, 3) == [3, 7, 11]


def test_token_map_drops_prefix_tokens_and_keeps_row_major_positions():
    tokens = torch.arange(2 * (1 + 6) * 3, dtype=torch.float32).reshape(2, 7, 3)  # [B, cls + 2×3, C]
    grid = token_map(tokens, height=2, prefix_tokens=1)
    assert grid.shape == (2, 3, 2, 3)
    for row in range(2):
        for column in range(3):
            torch.testing.assert_close(grid[:, :, row, column], tokens[:, 1 + row * 3 + column, :])
    nhwc = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(token_map(nhwc, 4, channels_last=True), nhwc.permute(0, 3, 1, 2))


@torch.no_grad()
def test_timm_cnn_taps_are_its_stem_and_stages():
    network = build_model("timm:resnet10t", 10, 32).eval()
    _randomise_batch_norms(network)
    x = _images()
    features, logits = network(x, is_feat=True)
    m = network.model
    stem = m.act1(m.bn1(m.conv1(x)))
    stages = [m.layer1(m.maxpool(stem))]
    for layer in (m.layer2, m.layer3, m.layer4):
        stages.append(layer(stages[-1]))
    expected = [stem, *stages, stages[-1].mean((2, 3))]
    assert [tuple(f.shape[1:]) for f in features] == [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2),
                                                      (512, 1, 1), (512,)]
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)
    _assert_contract(network, features, logits, x)
    with pytest.raises(UsageError, match="timm:resnet10t has no pre-activation taps"):
        network(x, is_feat=True, preact=True)


@torch.no_grad()
def test_timm_vit_taps_evenly_spaced_blocks_as_token_maps():
    network = build_model(VIT, 10, 32).eval()
    assert network.model.patch_embed.img_size == (32, 32)  # sized for the data set: 8×8 patches
    x = _images()
    features, logits = network(x, is_feat=True)
    m = network.model
    patches = m.patch_embed(x)  # [B, 64, C]
    tokens = m.norm_pre(m.patch_drop(m._pos_embed(patches)))
    block_outputs = []
    for block in m.blocks:
        tokens = block(tokens)
        block_outputs.append(tokens)
    assert len(features) == 6  # stem, 4 of the 8 blocks, embedding
    stem, *maps, embedding = features
    torch.testing.assert_close(stem[:, :, 2, 5], patches[:, 2 * 8 + 5, :])
    for got, index in zip(maps, [1, 3, 5, 7]):
        assert got.shape == (2, 32, 8, 8)
        torch.testing.assert_close(got[:, :, 3, 6], block_outputs[index][:, 1 + 3 * 8 + 6, :])  # class token dropped
    torch.testing.assert_close(embedding, m.norm(block_outputs[-1])[:, 0])
    _assert_contract(network, features, logits, x)
    preact, _ = network(x, is_feat=True, preact=True)  # a block ends in a sum: the same maps
    for got, want in zip(preact, features):
        torch.testing.assert_close(got, want)


@torch.no_grad()
def test_torchvision_resnet_taps_are_its_stem_and_layers():
    network = build_model("torchvision:resnet18", 10, 32).eval()
    _randomise_batch_norms(network)
    x = _images()
    features, logits = network(x, is_feat=True)
    m = network.model
    stem = m.relu(m.bn1(m.conv1(x)))
    stages = [m.layer1(m.maxpool(stem))]
    for layer in (m.layer2, m.layer3, m.layer4):
        stages.append(layer(stages[-1]))
    for got, want in zip(features, [stem, *stages, torch.flatten(m.avgpool(stages[-1]), 1)]):
        torch.testing.assert_close(got, want)
    assert len(features) == 6
    _assert_contract(network, features, logits, x)


@torch.no_grad()
def test_torchvision_stem_block_then_one_tap_per_resolution():
    """ConvNeXt: ``features`` = [stem, stage, downsample, stage, ...]: the stem block, then the four stages."""
    network = build_model("torchvision:convnext_tiny", 10, 32).eval()
    x = _images()
    features, logits = network(x, is_feat=True)
    outputs, h = [], x
    for module in network.model.features:
        h = module(h)
        outputs.append(h)
    expected = [outputs[0], outputs[1], outputs[3], outputs[5], outputs[7]]
    assert [tuple(f.shape[1:]) for f in features] == [(96, 8, 8), (96, 8, 8), (192, 4, 4), (384, 2, 2),
                                                      (768, 1, 1), (768,)]
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want)
    _assert_contract(network, features, logits, x)


@torch.no_grad()
def test_torchvision_vit_taps_its_encoder_blocks():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=2, hidden_dim=16,
                                                 mlp_dim=32, num_classes=10)
    network = LibraryNet(model, "torchvision:vit_small_test", 32, 10, taps=2).eval()
    x = _images()
    features, logits = network(x, is_feat=True)
    patches = model.conv_proj(x)
    tokens = torch.cat([model.class_token.expand(2, -1, -1), model._process_input(x)], dim=1)
    tokens = model.encoder.dropout(tokens + model.encoder.pos_embedding)
    block_outputs = []
    for layer in model.encoder.layers:
        tokens = layer(tokens)
        block_outputs.append(tokens)
    torch.testing.assert_close(features[0], patches)
    for got, index in zip(features[1:3], [1, 3]):
        torch.testing.assert_close(got[:, :, 5, 2], block_outputs[index][:, 1 + 5 * 8 + 2, :])
    torch.testing.assert_close(features[-1], model.encoder.ln(block_outputs[-1])[:, 0])
    _assert_contract(network, features, logits, x)
    assert network.honours_preact


@pytest.fixture
def plain_network():
    """A plain ``nn.Sequential`` classifier registered under a test name; unregistered afterwards."""
    name = "PlainTestNet"

    @register_model(name, input_kind="cifar")
    def build(num_classes: int = 100, width: int = 8) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1),
                             nn.ReLU(), nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    yield name
    del model_dict[name], model_info[name]


@torch.no_grad()
def test_a_registered_plain_classifier_gets_the_contract_by_hooks(plain_network):
    network = build_model(f"{plain_network}@width=4", 10).eval()  # a CIFAR network: probed at 32×32
    assert isinstance(network, LibraryNet)
    x = _images()
    features, logits = network(x, is_feat=True)
    layers = network.model
    assert [tuple(f.shape[1:]) for f in features] == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (16,)]
    torch.testing.assert_close(features[0], layers[1](layers[0](x)))
    _assert_contract(network, features, logits, x)


@pytest.mark.parametrize("spec", [VIT, "torchvision:resnet18"])
@torch.no_grad()
def test_a_deep_copy_taps_its_own_modules(spec):
    network = build_model(spec, 10, 32).eval()
    copy = deepcopy(network)
    for parameter in copy.parameters():
        parameter.add_(0.01)
    x = _images()
    features, _ = network(x, is_feat=True)
    copied_features, copied_logits = copy(x, is_feat=True)
    assert not any(torch.allclose(a, b) for a, b in zip(features, copied_features))
    _assert_contract(copy, copied_features, copied_logits, x)


@pytest.mark.parametrize("spec", [VIT, "timm:resnet10t", "torchvision:resnet18"])
def test_feature_modules_hold_every_parameter_but_the_classifiers(spec):
    network = build_model(spec, 10, 32)
    feature_ids = [id(p) for p in network.get_feat_modules().parameters()]
    classifier_ids = {id(p) for p in network.get_classifier().parameters()}
    assert len(feature_ids) == len(set(feature_ids)) and not set(feature_ids) & classifier_ids
    assert set(feature_ids) | classifier_ids == {id(p) for p in network.parameters()}
    assert list(network.state_dict()) == [f"model.{key}" for key in network.model.state_dict()]


def test_a_model_with_two_heads_or_a_wrong_argument_is_one_usage_error():
    with pytest.raises(UsageError, match="not one linear layer"):
        build_model("timm:deit_tiny_distilled_patch16_224@depth=1,patch_size=4", 10, 32)
    with pytest.raises(UsageError, match=r"torchvision:resnet18@no_such_argument=1: .*no_such_argument"):
        build_model("torchvision:resnet18@no_such_argument=1", 10, 32)


def _same_logits(teacher: nn.Module, source: nn.Module, size: int = 32) -> None:
    teacher.eval()
    source.eval()
    with torch.no_grad():
        expected = source(_images(size=size))
        assert expected.std() > 0
        torch.testing.assert_close(teacher(_images(size=size)), expected, rtol=0, atol=0)


def test_a_plain_torchvision_state_dict_is_a_library_teacher(tmp_path):
    source = torchvision.models.resnet18(num_classes=10)
    _randomise_batch_norms(source)
    path = tmp_path / "teacher.pth"
    torch.save(source.state_dict(), path)
    teacher = build_teacher(read_teacher(path, "torchvision:resnet18", "cifar100"), 10, 32)
    _same_logits(teacher, source)


def test_timm_state_dict_files_and_safetensors_are_library_teachers(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2,
                               embed_dim=32, num_heads=2)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "timm.pth")
    save_file(source.state_dict(), tmp_path / "timm.safetensors")
    spec = "timm:vit_tiny_patch16_224@depth=2,embed_dim=32,num_heads=2,patch_size=4"
    for name in ("timm.pth", "timm.safetensors"):
        _same_logits(build_teacher(read_teacher(tmp_path / name, spec, "cifar100"), 10, 32), source)


def test_a_checkpoint_of_this_repository_rebuilds_its_library_network_alone(tmp_path):
    """The record's architecture (name and arguments) suffices: no --model_t."""
    source = build_model(VIT, 10, 32)
    path = tmp_path / "anywhere" / "student_last.pth"
    path.parent.mkdir()
    torch.save({"model": source.state_dict(), "arch": VIT, "num_classes": 10, "dataset": "cifar100"}, path)
    teacher_file = read_teacher(path, None, "cifar100")
    assert teacher_file.arch == VIT
    _same_logits(build_teacher(teacher_file, 10, 32), source)


def test_torchvisions_own_resnet34_file_is_the_zoos_resnet34_teacher(tmp_path):
    """torchvision's file layout and name (``resnet34-<hash>.pth``): no --model_t needed."""
    source = torchvision.models.resnet34(num_classes=3)
    _randomise_batch_norms(source)
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(source.state_dict(), path)
    teacher_file = read_teacher(path, None, "imagenet")
    assert teacher_file.arch == "ResNet34"
    teacher = build_teacher(teacher_file, 3, 224)
    assert type(teacher).__name__ == "ImageNetResNet"
    _same_logits(teacher, source, size=64)


@pytest.fixture
def offline_torchvision_weights(monkeypatch):
    """torchvision's pretrained weights served from memory: a fixed resnet18 state dict, no download."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    _randomise_batch_norms(reference)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict",
                        lambda self, *args, **kwargs: reference.state_dict())
    return reference


def test_pretrained_teachers_load_the_library_weights(offline_torchvision_weights):
    for arch in ("torchvision:resnet18", "ResNet18"):
        teacher = build_teacher(read_teacher(None, arch, "imagenet", pretrained=True), 1000, 224)
        _same_logits(teacher, offline_torchvision_weights, size=64)
    with pytest.raises(UsageError, match="predicts 1000 classes"):
        build_teacher(read_teacher(None, "ResNet18", "imagenet", pretrained=True), 3, 224)
    with pytest.raises(UsageError, match="resnet8 has no library weights"):
        build_model("resnet8", 100, 32, pretrained=True)
