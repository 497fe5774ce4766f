"""OFD: margins from the teacher's BN, the partial L2 by hand, each network's BN before its taps, one run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import models
from dataset.batch import Batch
from distiller_zoo import ConnectorConvBN, distillation_loss, feat_loss, get_margin_from_BN
from distiller_zoo.ofd import OFD
from errors import UsageError
from models.resnetv2 import BottleneckResNet
from tests.conftest import run_main
from tests.distiller_checks import build_distiller, check_training_step


def bn_with(scale, shift) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(scale))
    bn.weight.data = torch.tensor(scale)
    bn.bias.data = torch.tensor(shift)
    return bn


def phi(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


SCALES = [1.0, -2.0, 0.5, 0.3, 1.5]
SHIFTS = [0.0, 1.0, -0.7, 1.2, 6.0]  # the last channel is almost never negative: the −3|γ| fallback


def test_margin_by_hand_and_as_the_mean_of_the_negative_part():
    margin = get_margin_from_BN(bn_with(SCALES, SHIFTS))
    assert margin.shape == (5,) and margin.dtype == torch.float32
    for value, scale, shift in zip(margin.tolist(), SCALES, SHIFTS):
        s = abs(scale)
        if cdf(-shift / s) > 0.001:
            expected = shift - s * phi(shift / s) / cdf(-shift / s)
            # E[x | x < 0] for x ~ N(shift, s²), by numerical integration
            grid = np.linspace(shift - 12 * s, 0.0, 400001)
            density = np.exp(-((grid - shift) / s) ** 2 / 2)
            assert expected == pytest.approx(np.trapezoid(grid * density, grid) / np.trapezoid(density, grid),
                                             rel=1e-6)
        else:
            expected = -3 * s
        assert value == pytest.approx(expected, rel=1e-6)
    assert margin[-1].item() == pytest.approx(-4.5)
    assert (margin < 0).all()


def partial_l2_by_hand(source, target, margin):
    """The paper's partial L2 by its three cases: what the teacher's ReLU erases is not penalised."""
    s, t = source.detach().double().numpy(), target.detach().double().numpy()
    m = np.broadcast_to(margin.double().numpy(), s.shape)
    below = (t <= m) * (s > m) * (s - m) ** 2  # the teacher is at or below its margin
    between = (t > m) * (t <= 0) * (s > t) * (s - t) ** 2  # negative, above the margin
    above = (t > 0) * (s - t) ** 2  # positive: plain L2
    return float((below + between + above).sum())


def test_partial_l2_by_hand_in_both_upstream_forms():
    torch.manual_seed(0)
    source, target = torch.randn(3, 2, 2, 2) * 2, torch.randn(3, 2, 2, 2) * 2
    margin = torch.tensor([-0.5, -1.0]).view(1, 2, 1, 1)
    expected = partial_l2_by_hand(source, target, margin)
    assert distillation_loss(source, target, margin).item() == pytest.approx(expected, rel=1e-6)
    assert feat_loss(source, target, margin).item() == pytest.approx(expected / 3, rel=1e-6)


def test_partial_l2_each_region():
    margin = torch.tensor([-1.0]).view(1, 1, 1, 1)
    source = torch.tensor([-3.0, 0.5, -0.2, -0.8, 2.0, 1.0]).view(1, 1, 1, 6)
    target = torch.tensor([-2.0, -2.0, -0.5, -0.5, 3.0, -0.5]).view(1, 1, 1, 6)
    # t ≤ m: s below the margin is free, s above pays (s − m)²; m < t ≤ 0: only s > t pays; t > 0: always.
    terms = [0.0, 1.5**2, 0.3**2, 0.0, 1.0, 1.5**2]
    assert distillation_loss(source, target, margin).item() == pytest.approx(sum(terms))


def test_connector_keys_shapes_and_initialisation():
    torch.manual_seed(0)
    connector = ConnectorConvBN([16, 32], [64, 128], kernel_size=3)
    assert [k for k, _ in connector.named_parameters()] == [
        "connectors.0.0.weight", "connectors.0.1.weight", "connectors.0.1.bias",
        "connectors.1.0.weight", "connectors.1.1.weight", "connectors.1.1.bias"]
    conv = connector.connectors[1][0]
    assert conv.weight.shape == (128, 32, 3, 3) and conv.padding == (1, 1) and conv.bias is None
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)
    assert connector.connectors[1][1].weight.eq(1).all() and connector.connectors[1][1].bias.eq(0).all()
    outputs = connector([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])
    assert [o.shape for o in outputs] == [(2, 64, 8, 8), (2, 128, 4, 4)]


NETWORKS = {name: lambda name=name: models.model_dict[name](num_classes=10)
            for name in ("resnet8", "resnet8x4", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1")}
NETWORKS["bottleneck"] = lambda: BottleneckResNet((1, 1, 1, 1), num_classes=10)  # ResNet50's family, one block a stage


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_bn_before_relu_is_the_last_term_of_each_preact_tap(name):
    """Shifting BN_i's output by δ shifts exactly the i-th pre-activation stage map by δ."""
    torch.manual_seed(0)
    network = NETWORKS[name]().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, _ = network(images, is_feat=True, preact=True)
    bns = network.get_bn_before_relu()
    assert [bn.num_features for bn in bns] == [f.shape[1] for f in plain[1:-1]]
    for index, bn in enumerate(bns, start=1):
        handle = bn.register_forward_hook(lambda module, args, output: output + 100.0)
        with torch.no_grad():
            shifted, _ = network(images, is_feat=True, preact=True)
        handle.remove()
        torch.testing.assert_close(shifted[index], plain[index] + 100.0)


def test_a_teacher_without_those_bns_is_a_usage_error():
    with pytest.raises(UsageError, match="teacher ShuffleV2 does not expose"):
        build_distiller("ofd", "resnet8", "ShuffleV2")


def test_term_by_hand_with_the_deepest_stages_paired():
    """resnet8 (3 stages) ← vgg8 (4): the last three vgg8 stages, their BNs' margins, deepest weight 1."""
    torch.manual_seed(1)
    distiller = build_distiller("ofd", "resnet8", "vgg8")
    assert isinstance(distiller, OFD)
    bns = distiller.teacher.get_bn_before_relu()[1:]
    for index, bn in enumerate(bns, start=1):
        torch.testing.assert_close(getattr(distiller, f"margin{index}"), get_margin_from_BN(bn).view(1, -1, 1, 1))
    assert distiller.connectors.s_channels == [16, 32, 64]
    assert distiller.connectors.t_channels == [256, 512, 512]

    distiller.train()
    images = torch.randn(4, 3, 32, 32)
    _, terms = distiller(Batch(images, torch.randint(0, 10, (4,))))
    assert not distiller.teacher.training
    student_features, _ = distiller.student(images, is_feat=True, preact=True)
    with torch.no_grad():
        teacher_features, _ = distiller.teacher(images, is_feat=True, preact=True)
    expected = 0.0
    for index, (s_map, t_map, bn) in enumerate(zip(student_features[1:-1], teacher_features[2:-1], bns)):
        source = distiller.connectors.connectors[index](s_map).detach()
        target = nn.functional.adaptive_avg_pool2d(t_map, source.shape[-2:])
        margin = get_margin_from_BN(bn).view(1, -1, 1, 1)
        expected += partial_l2_by_hand(source, target, margin) / 4 / 2 ** (2 - index)
    assert terms["ofd"].item() == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_the_student_and_the_connectors_never_the_teacher():
    distiller = build_distiller("ofd", "wrn_16_1", "wrn_16_2")
    check_training_step(distiller, (distiller.connectors,))
    assert not any(name.startswith("margin") for name, _ in distiller.named_parameters())
    assert {f"margin{i}" for i in (1, 2, 3)} <= set(distiller.trainable_state_dict())


def test_one_epoch_run_logs_the_term(tmp_path, cifar100_root, cifar100_teacher):
    status, _ = run_main("student", ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "ofd",
                                     "--data_root", str(cifar100_root), "--epochs", "1", "--batch_size", "32",
                                     "--num_workers", "0", "--save_dir", str(tmp_path)])
    assert status == 0
    [metrics] = tmp_path.glob("students/models/*ofd*/metrics.jsonl")
    record = json.loads(metrics.read_text().splitlines()[-1])
    assert record["train_ofd"] > 0
    assert record["train_loss"] == pytest.approx(record["train_cls"] + 0.001 * record["train_ofd"], rel=1e-4)
