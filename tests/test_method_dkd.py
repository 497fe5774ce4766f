"""DKD (METHODS.md §1.22): TCKD + NCKD by hand, the warm-up, the Distiller with ``set_epoch``."""

from __future__ import annotations

import math

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo.dkd import DKD, DKDLoss
from tests.distiller_checks import build_with_options


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def dkd_by_hand(z_s, z_t, targets, alpha, beta, T, epoch, warmup):
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(z_s.tolist(), z_t.tolist(), targets.tolist()):
        p_s = softmax([v / T for v in s_row])
        p_t = softmax([v / T for v in t_row])
        b_s = [p_s[y], 1 - p_s[y]]
        b_t = [p_t[y], 1 - p_t[y]]
        tckd += sum(t * (math.log(t) - math.log(s)) for t, s in zip(b_t, b_s))
        # distributions over the non-target classes only
        rest_s = softmax([v / T for c, v in enumerate(s_row) if c != y])
        rest_t = softmax([v / T for c, v in enumerate(t_row) if c != y])
        nckd += sum(t * (math.log(t) - math.log(s)) for t, s in zip(rest_t, rest_s))
    n = len(targets)
    return min(epoch / warmup, 1.0) * (alpha * tckd + beta * nckd) * T**2 / n


@pytest.mark.parametrize(("epoch", "alpha", "beta", "T"), [(5, 1.0, 8.0, 4.0), (30, 0.5, 2.0, 1.0), (1, 2.0, 6.0, 2.0)])
def test_dkd_loss_by_hand(epoch, alpha, beta, T):
    torch.manual_seed(epoch)
    z_s, z_t = torch.randn(4, 6) * 3, torch.randn(4, 6) * 3
    targets = torch.tensor([0, 5, 2, 2])
    loss = DKDLoss(alpha=alpha, beta=beta, temperature=T, warmup=20)
    expected = dkd_by_hand(z_s, z_t, targets, alpha, beta, T, epoch, 20)
    torch.testing.assert_close(loss(z_s, z_t, targets, epoch), torch.tensor(expected, dtype=torch.float32))


def test_defaults_and_warm_up_ramp():
    loss = DKDLoss()
    assert (loss.alpha, loss.beta, loss.temperature, loss.warmup) == (1.0, 8.0, 4.0, 20)
    z_s, z_t, targets = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([1, 0, 4])
    full = loss(z_s, z_t, targets, 20)
    torch.testing.assert_close(loss(z_s, z_t, targets, 10), full / 2)
    torch.testing.assert_close(loss(z_s, z_t, targets, 100), full)


def test_distiller_step_uses_epoch_and_kd_temperature():
    torch.manual_seed(0)
    distiller, _ = build_with_options("dkd", "resnet8", "resnet20", beta=1.0, kd_T=2.0, dkd_beta=6.0)
    assert isinstance(distiller, DKD)
    assert (distiller.criterion.temperature, distiller.criterion.beta) == (2.0, 6.0)
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0, "dkd": 1.0}
    distiller.train()
    assert not distiller.teacher.training

    batch = Batch(torch.randn(4, 3, 32, 32), torch.randint(10, (4,)))
    distiller.set_epoch(4)
    logits, terms = distiller(batch)
    with torch.no_grad():
        teacher_logits = distiller.teacher(batch.images)
    expected = dkd_by_hand(logits.detach(), teacher_logits, batch.targets, 1.0, 6.0, 2.0, 4, 20)
    torch.testing.assert_close(terms["dkd"], torch.tensor(expected, dtype=torch.float32))
    assert all(torch.isfinite(t) for t in terms.values())
    sum(distiller.loss_weights[k] * v for k, v in terms.items()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert distiller.trainable_state_dict() == {}
