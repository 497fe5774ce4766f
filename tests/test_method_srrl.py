"""SRRL (METHODS.md §1.19): the transfer and loss by hand, upstream keys, gradients through the
frozen teacher classifier."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import distiller_zoo
from distiller_zoo.srrl import SRRL, SRRLDistiller
from tests.distiller_checks import build_with_options, check_training_step, random_batch
from tests.fixtures import state_shapes, upstream_state_shapes


def hand_transfer(srrl: SRRL, e_s: np.ndarray, training: bool) -> np.ndarray:
    """Conv1×1 (a matrix product) → BN (batch or running statistics, eps 1e-5) → ReLU."""
    conv, bn = srrl.transfer[0], srrl.transfer[1]
    weight = conv.weight.detach().double().numpy()[:, :, 0, 0]
    x = e_s @ weight.T
    if training:
        mean, var = x.mean(axis=0), x.var(axis=0)
    else:
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    return np.maximum((x - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0.0)


def hand_linear(linear: nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()


def test_srrl_outputs_and_loss_match_hand_computation() -> None:
    torch.manual_seed(0)
    srrl = SRRL(s_n=3, t_n=5)
    with torch.no_grad():
        srrl.transfer[1].weight.uniform_(0.5, 1.5)
        srrl.transfer[1].bias.uniform_(-0.5, 0.5)
    cls_t = nn.Linear(5, 7)
    e_s, e_t, z_t = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 7)
    h, prediction = srrl(e_s, cls_t)
    hand_h = hand_transfer(srrl, e_s.double().numpy(), training=True)
    hand_prediction = hand_linear(cls_t, hand_h)
    torch.testing.assert_close(h, torch.tensor(hand_h, dtype=torch.float32))
    torch.testing.assert_close(prediction, torch.tensor(hand_prediction, dtype=torch.float32))
    loss = nn.functional.mse_loss(h, e_t) + nn.functional.mse_loss(prediction, z_t)
    hand_loss = ((hand_h - e_t.double().numpy()) ** 2).mean() + ((hand_prediction - z_t.double().numpy()) ** 2).mean()
    torch.testing.assert_close(loss, torch.tensor(hand_loss, dtype=torch.float32))


def test_gradient_flows_through_the_frozen_teacher_classifier() -> None:
    torch.manual_seed(0)
    srrl = SRRL(s_n=3, t_n=5)
    cls_t = nn.Linear(5, 7).requires_grad_(False)
    _, prediction = srrl(torch.randn(4, 3), cls_t)
    nn.functional.mse_loss(prediction, torch.randn(4, 7)).backward()
    assert srrl.transfer[0].weight.grad is not None and srrl.transfer[0].weight.grad.abs().sum() > 0
    assert cls_t.weight.grad is None


def test_keys_match_upstream() -> None:
    state = state_shapes(SRRL(s_n=64, t_n=256), "srrl.") | state_shapes(nn.Linear(256, 100), "cls_t.")
    assert state == upstream_state_shapes("simkd_SRRL")


def build() -> tuple[SRRLDistiller, object]:
    torch.manual_seed(0)
    return build_with_options("srrl", "resnet8", "resnet8x4", gamma=1.0, alpha=1.0, beta=1.0)


def test_registered_name() -> None:
    assert distiller_zoo.get("srrl") is SRRLDistiller


def test_distiller_term_on_real_networks() -> None:
    distiller, _ = build()
    distiller.eval()
    batch = random_batch()
    _, terms = distiller(batch)
    with torch.no_grad():
        e_s = distiller.student(batch.images, is_feat=True)[0][-1].double().numpy()
        t_features, z_t = distiller.teacher(batch.images, is_feat=True)
    h = hand_transfer(distiller.srrl, e_s, training=False)
    prediction = hand_linear(distiller.teacher.fc, h)
    expected = ((h - t_features[-1].double().numpy()) ** 2).mean() + ((prediction - z_t.double().numpy()) ** 2).mean()
    torch.testing.assert_close(terms["srrl"], torch.tensor(expected, dtype=torch.float32))


def test_shared_training_step_checks() -> None:
    distiller, _ = build()
    check_training_step(distiller, (distiller.srrl,))


def test_distiller_step_gradients() -> None:
    distiller, _ = build()
    distiller.train()
    assert not distiller.teacher.training
    assert distiller.loss_weights == {"cls": 1.0, "kd": 1.0, "srrl": 1.0}
    logits, terms = distiller(random_batch())
    assert logits.shape == (4, 10) and set(terms) == {"cls", "kd", "srrl"}
    assert all(torch.isfinite(v) for v in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.srrl.parameters())
    assert all(p.grad is not None for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    main = {id(p) for p in distiller.main_parameters()}
    assert {id(p) for p in distiller.srrl.parameters()} <= main
    assert not {id(p) for p in distiller.teacher.parameters()} & main
    assert not distiller.teacher.training


def test_trainable_state_round_trip() -> None:
    distiller, _ = build()
    state = distiller.trainable_state_dict()
    assert {key.split(".")[0] for key in state} == {"srrl"}
    other, _ = build()
    with torch.no_grad():
        other.srrl.transfer[0].weight.add_(1.0)
    other.load_trainable_state_dict(state)
    torch.testing.assert_close(other.srrl.transfer[0].weight, distiller.srrl.transfer[0].weight)
