"""ReviewKD: HCL and ABF by hand, channel lists probed as upstream typed them, warm-up, one run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo import ABF, hcl_loss
from distiller_zoo.reviewkd import ReviewKD
from errors import UsageError
from tests.conftest import run_main
from tests.distiller_checks import adaptive_avg_pool_reference, build_distiller, check_training_step

# Paper §3.3: the full map, then the pooled maps smaller than it, each half the previous weight
# (by the map height h; the row 8 holds for every h ≥ 8).
LEVEL_WEIGHTS = {8: [(None, 1), (4, 1 / 2), (2, 1 / 4), (1, 1 / 8)], 4: [(None, 1), (2, 1 / 2), (1, 1 / 4)],
                 2: [(None, 1), (1, 1 / 2)], 1: [(None, 1)]}


def hcl_by_hand(list_s, list_t):
    total = 0.0
    for f_s, f_t in zip(list_s, list_t):
        f_s, f_t = f_s.detach().double().numpy(), f_t.detach().double().numpy()
        weighted, weights = 0.0, 0.0
        for size, weight in LEVEL_WEIGHTS[min(f_s.shape[2], 8)]:  # every pool is smaller than h ≥ 8
            a, b = (f_s, f_t) if size is None else (adaptive_avg_pool_reference(f_s, size),
                                                    adaptive_avg_pool_reference(f_t, size))
            weighted += weight * np.mean((a - b) ** 2)
            weights += weight
        total += weighted / weights
    return total


def test_hcl_loss_by_hand():
    torch.manual_seed(0)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 2, 2, 2), (2, 5, 1, 1)]
    list_s = [torch.randn(shape) for shape in shapes]
    list_t = [torch.randn(shape) for shape in shapes]
    value = hcl_loss(list_s, list_t)
    assert value.item() == pytest.approx(hcl_by_hand(list_s, list_t), rel=1e-6)
    assert hcl_loss(list_t, list_t).item() == 0.0


def bn_eval(x, bn):
    """Eval-mode BatchNorm of a numpy ``[B, C, H, W]`` array."""
    scale = bn.weight.detach().numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    shift = bn.bias.detach().numpy() - bn.running_mean.numpy() * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def conv3x3_by_hand(x, weight):
    """A 3×3, padding-1, bias-free convolution of ``[B, C, H, W]`` as nine shifted channel sums."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    height, width = x.shape[2:]
    out = np.zeros((x.shape[0], weight.shape[0], height, width))
    for di in range(3):
        for dj in range(3):
            window = padded[:, :, di:di + height, dj:dj + width]
            out += np.einsum("oc,bchw->bohw", weight[:, :, di, dj], window)
    return out


def randomise_bn(module):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)


def test_abf_by_hand():
    """1×1 conv·BN, nearest 2× upsampling of the residual, sigmoid attention blend, resize, 3×3 conv·BN."""
    torch.manual_seed(1)
    abf = ABF(in_channel=3, mid_channel=4, out_channel=2, fuse=True).eval()
    randomise_bn(abf)
    x, y = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 1, 1)
    out, residual = abf(x, y, shape=2, out_shape=4)

    w1 = abf.conv1[0].weight.detach().numpy()[:, :, 0, 0]
    mid = bn_eval(np.einsum("oc,bchw->bohw", w1, x.numpy()), abf.conv1[1])
    up = np.repeat(np.repeat(y.numpy(), 2, axis=2), 2, axis=3)
    w_att, b_att = abf.att_conv[0].weight.detach().numpy()[:, :, 0, 0], abf.att_conv[0].bias.detach().numpy()
    logits = np.einsum("oc,bchw->bohw", w_att, np.concatenate([mid, up], axis=1)) + b_att[None, :, None, None]
    attention = 1 / (1 + np.exp(-logits))
    blended = mid * attention[:, 0:1] + up * attention[:, 1:2]
    resized = np.repeat(np.repeat(blended, 2, axis=2), 2, axis=3)
    expected = bn_eval(conv3x3_by_hand(resized, abf.conv2[0].weight.detach().numpy()), abf.conv2[1])

    np.testing.assert_allclose(residual.detach().numpy(), resized, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_abf_parameter_names_are_upstreams():
    fused = ABF(8, 4, 6, fuse=True)
    assert [k for k, _ in fused.named_parameters()] == [
        "conv1.0.weight", "conv1.1.weight", "conv1.1.bias", "conv2.0.weight", "conv2.1.weight", "conv2.1.bias",
        "att_conv.0.weight", "att_conv.0.bias"]
    assert fused.att_conv[0].weight.shape == (2, 8, 1, 1)
    assert not any(key.startswith("att_conv") for key in ABF(8, 4, 6, fuse=False).state_dict())


# The authors' build_review_kd lists: (in_channels, out_channels, shapes, out_shapes), shallow to deep.
# Each teacher stands in for the one upstream typed the lists for, whose widths and resolutions it
# shares (resnet8x4 for resnet32x4, wrn_16_2 for wrn_40_2, vgg8 for vgg13): fast to build.
UPSTREAM_TABLES = {
    ("resnet8x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [32, 16, 8, 1], [32, 16, 8, 1]),
    ("ShuffleV1", "resnet8x4"): ([240, 480, 960, 960], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
    ("ShuffleV2", "resnet8x4"): ([116, 232, 464, 1024], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
    ("wrn_16_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [32, 16, 8, 1], [32, 16, 8, 1]),
    ("MobileNetV2", "vgg8"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [16, 8, 4, 2, 1],
                              [16, 8, 4, 4, 1]),
}


@pytest.mark.parametrize(("student", "teacher"), sorted(UPSTREAM_TABLES))
def test_probed_channels_are_the_lists_upstream_typed_per_pair(student, teacher):
    in_channels, out_channels, shapes, out_shapes = UPSTREAM_TABLES[(student, teacher)]
    distiller = build_distiller("reviewkd", student, teacher)
    abfs = list(distiller.abfs)[::-1]  # shallow to deep
    assert [abf.conv1[0].in_channels for abf in abfs] == in_channels
    assert [abf.conv2[0].out_channels for abf in abfs] == out_channels
    assert {abf.conv1[0].out_channels for abf in abfs} == {min(512, in_channels[-1])}
    assert [abf.att_conv is not None for abf in abfs] == [True] * (len(abfs) - 1) + [False]
    assert distiller.shapes[::-1] == shapes and distiller.out_shapes[::-1] == out_shapes


def test_max_mid_flag_and_unequal_levels():
    distiller = build_distiller("reviewkd", "resnet8x4", "resnet8x4", reviewkd_max_mid=100)
    assert {abf.conv1[0].out_channels for abf in distiller.abfs} == {100}
    with pytest.raises(UsageError, match="student has 4 and the teacher 5"):
        build_distiller("reviewkd", "resnet8", "vgg8")


@pytest.mark.parametrize("epoch", [1, 6, 21, 40])
def test_term_is_the_warmed_up_hcl_of_the_reviewed_student_levels(epoch):
    torch.manual_seed(2)
    distiller = build_distiller("reviewkd", "resnet8", "resnet20")
    assert isinstance(distiller, ReviewKD)
    distiller.train()
    distiller.set_epoch(epoch)
    images = torch.randn(4, 3, 32, 32)
    _, terms = distiller(Batch(images, torch.randint(0, 10, (4,))))

    student_features, _ = distiller.student(images, is_feat=True)
    with torch.no_grad():
        teacher_features, _ = distiller.teacher(images, is_feat=True, preact=True)
    levels = [*student_features[1:-1], student_features[-1][:, :, None, None]]
    targets = [*teacher_features[1:-1], teacher_features[-1][:, :, None, None]]
    assert min(f.min() for f in levels[:-1]) >= 0  # the student is tapped after its ReLUs (CIFAR)
    assert min(f.min() for f in targets[:-1]) < 0  # the teacher before them
    expected = min((epoch - 1) / 20, 1.0) * hcl_by_hand(distiller.review(levels), targets)
    assert terms["reviewkd"].item() == pytest.approx(expected, rel=1e-5, abs=1e-12)
    if epoch == 1:
        assert terms["reviewkd"].item() == 0.0


def test_student_preact_flag_taps_the_student_before_its_relus():
    distiller = build_distiller("reviewkd", "resnet8", "resnet20", reviewkd_student_taps="preact",
                                  reviewkd_warmup=0)
    outputs = distiller.run_student(torch.randn(2, 3, 32, 32))
    assert min(f.min() for f in outputs.features[1:-1]) < 0
    assert distiller.ramp() == 1.0


def test_gradients_reach_the_student_and_every_abf_never_the_teacher():
    distiller = build_distiller("reviewkd", "ShuffleV1", "resnet8x4")
    distiller.set_epoch(21)
    check_training_step(distiller, (distiller.abfs,))


def test_one_epoch_run_logs_the_term(tmp_path, cifar100_root, cifar100_teacher):
    status, _ = run_main("student", ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "reviewkd",
                                     "--reviewkd_warmup", "0", "--data_root", str(cifar100_root), "--epochs", "1",
                                     "--batch_size", "32", "--num_workers", "0", "--save_dir", str(tmp_path)])
    assert status == 0
    [metrics] = tmp_path.glob("students/models/*reviewkd*/metrics.jsonl")
    record = json.loads(metrics.read_text().splitlines()[-1])
    assert record["train_reviewkd"] > 0
    assert record["train_loss"] == pytest.approx(record["train_cls"] + 5 * record["train_reviewkd"], rel=1e-4)
