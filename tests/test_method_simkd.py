"""SimKD (METHODS.md §1.20): the projector, alignment and prediction by hand, upstream keys,
prediction through the teacher classifier at training and evaluation time, and the state a
checkpoint must carry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distiller_zoo
from distiller_zoo.simkd import SimKD, SimKDDistiller
from tests.conftest import make_opt
from tests.distiller_checks import adaptive_avg_pool_reference, build_with_options, check_training_step, random_batch
from tests.fixtures import state_shapes, upstream_state_shapes


def hand_projector(simkd: SimKD, x: torch.Tensor) -> torch.Tensor:
    """conv1×1 · BN · ReLU · conv3×3 · BN · ReLU · conv1×1 · BN · ReLU, no conv bias, eval-mode BN."""
    convs = [m for m in simkd.transfer if isinstance(m, nn.Conv2d)]
    bns = [m for m in simkd.transfer if isinstance(m, nn.BatchNorm2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert all(c.bias is None for c in convs)
    with torch.no_grad():
        for conv, bn in zip(convs, bns):
            x = F.conv2d(x, conv.weight, padding=conv.kernel_size[0] // 2)
            x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
            x = torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
    return x


def randomise_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(("s_shape", "t_shape"), [
    ((4, 3, 4, 4), (4, 6, 2, 2)),  # student larger: the student map is pooled
    ((4, 3, 2, 2), (4, 6, 4, 4)),  # teacher larger: the teacher map is pooled
    ((4, 3, 2, 2), (4, 6, 2, 2)),  # equal: nothing is pooled
])
def test_simkd_matches_hand_computation(s_shape, t_shape) -> None:
    torch.manual_seed(0)
    simkd = SimKD(s_n=3, t_n=6, factor=2).eval()
    randomise_bn(simkd)
    cls_t = nn.Linear(6, 5)
    feat_s, feat_t = torch.randn(s_shape), torch.randn(t_shape)
    trans_feat_s, trans_feat_t, pred_feat_s = simkd(feat_s, feat_t, cls_t)
    size = min(s_shape[2], t_shape[2])
    source = torch.tensor(adaptive_avg_pool_reference(feat_s.double().numpy(), size), dtype=torch.float32)
    target = adaptive_avg_pool_reference(feat_t.double().numpy(), size)
    projected = hand_projector(simkd, source)
    pooled = projected.double().numpy().mean(axis=(2, 3))
    prediction = pooled @ cls_t.weight.detach().double().numpy().T + cls_t.bias.detach().double().numpy()
    torch.testing.assert_close(trans_feat_s, projected)
    torch.testing.assert_close(trans_feat_t, torch.tensor(target, dtype=torch.float32))
    torch.testing.assert_close(pred_feat_s, torch.tensor(prediction, dtype=torch.float32))
    assert simkd.transfer[0].out_channels == 3  # t_n / factor


@pytest.mark.parametrize(("entry", "s_n", "t_n"), [
    ("simkd_SimKD", 64, 128), ("simkd_SimKD_pool_s", 32, 128), ("simkd_SimKD_pool_t", 64, 64)])
def test_keys_match_upstream(entry: str, s_n: int, t_n: int) -> None:
    state = state_shapes(SimKD(s_n=s_n, t_n=t_n, factor=2), "simkd.") | state_shapes(nn.Linear(t_n, 100), "cls_t.")
    assert state == upstream_state_shapes(entry)


def build(model_s: str = "resnet8", model_t: str = "resnet8x4", **overrides) -> tuple[SimKDDistiller, object]:
    torch.manual_seed(0)
    return build_with_options("simkd", model_s, model_t, **{"gamma": 0.0, "alpha": 0.0, "beta": 1.0, **overrides})


def test_registered_name_and_factor_flag() -> None:
    assert distiller_zoo.get("simkd") is SimKDDistiller
    assert make_opt().factor == 2
    distiller, _ = build(factor=4)
    assert distiller.simkd.transfer[0].out_channels == 256 // 4


def hand_prediction(distiller: SimKDDistiller, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        f_s = distiller.student(images, is_feat=True)[0][-2]
        f_t = distiller.teacher(images, is_feat=True)[0][-2]
        size = min(f_s.shape[2], f_t.shape[2])
        source = torch.tensor(adaptive_avg_pool_reference(f_s.double().numpy(), size), dtype=torch.float32)
        pooled = hand_projector(distiller.simkd, source).mean(dim=(2, 3))
        return pooled @ distiller.teacher.get_classifier().weight.T + distiller.teacher.get_classifier().bias


@pytest.mark.parametrize("model_s", ["resnet8", "MobileNetV2"])  # 8×8 maps alike; 2×2 vs 8×8
def test_prediction_goes_through_projector_and_teacher_classifier(model_s: str) -> None:
    distiller, _ = build(model_s)
    randomise_bn(distiller.simkd)
    distiller.eval()
    batch = random_batch()
    expected = hand_prediction(distiller, batch.images)
    torch.testing.assert_close(distiller.predict(batch.images), expected)
    prediction, _ = distiller(batch)  # training accuracy is measured on the same ẑ
    torch.testing.assert_close(prediction, expected)
    assert not torch.allclose(prediction, distiller.student(batch.images))


def test_shared_training_step_checks() -> None:
    distiller, _ = build()
    check_training_step(distiller, (distiller.simkd,))


def test_distiller_step_gradients() -> None:
    distiller, _ = build()
    distiller.train()
    assert not distiller.teacher.training and not distiller.cls_t.training
    assert distiller.loss_weights == {"cls": 0.0, "kd": 0.0, "simkd": 1.0}
    prediction, terms = distiller(random_batch())
    assert prediction.shape == (4, 10) and set(terms) == {"cls", "kd", "simkd"}
    assert all(torch.isfinite(v) for v in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.simkd.parameters())
    assert distiller.student.layer3[-1].conv2.weight.grad.abs().sum() > 0
    fc = distiller.student.fc  # CE and KD weigh 0: the student's own classifier learns nothing
    assert fc.weight.grad is None or not fc.weight.grad.any()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    main = {id(p) for p in distiller.main_parameters()}
    assert {id(p) for p in distiller.simkd.parameters()} <= main
    assert {id(p) for p in distiller.student.parameters()} <= main
    assert not {id(p) for p in distiller.teacher.parameters()} & main


def test_trainable_state_carries_projector_and_teacher_classifier() -> None:
    distiller, _ = build()
    state = distiller.trainable_state_dict()
    projector = {f"simkd.{k}" for k in distiller.simkd.state_dict()}
    assert set(state) == projector | {"cls_t.weight", "cls_t.bias"}
    torch.testing.assert_close(state["cls_t.weight"], distiller.teacher.fc.weight)
    other, _ = build()
    with torch.no_grad():
        for p in other.simkd.parameters():
            p.add_(1.0)
        other.simkd.transfer[1].running_mean.add_(1.0)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key])
