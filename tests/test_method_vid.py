"""VID (METHODS.md §1.6): Gaussian negative log-likelihood by hand, head names, one training step."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.vid import VID, VIDLoss
from tests.distiller_checks import adaptive_avg_pool_reference, build_distiller, check_training_step
from tests.fixtures import state_shapes, upstream_state_shapes


def head_reference(head: VIDLoss, f_s: np.ndarray, f_t: np.ndarray) -> float:
    """Align, regress with three bias-free 1×1 convs (ReLU between), then the per-element NLL."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = adaptive_avg_pool_reference(f_s, f_t.shape[2])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = adaptive_avg_pool_reference(f_t, f_s.shape[2])
    w0, w1, w2 = (head.regressor[i].weight.detach().double().numpy()[:, :, 0, 0] for i in (0, 2, 4))
    hidden = np.maximum(np.einsum("oc,bchw->bohw", w0, f_s), 0)
    hidden = np.maximum(np.einsum("oc,bchw->bohw", w1, hidden), 0)
    mean = np.einsum("oc,bchw->bohw", w2, hidden)
    alpha = head.log_scale.detach().double().numpy()
    total = 0.0
    for b, c, h, w in np.ndindex(mean.shape):
        var = math.log(1 + math.exp(alpha[c])) + 1e-5
        total += 0.5 * ((mean[b, c, h, w] - f_t[b, c, h, w]) ** 2 / var + math.log(var))
    return total / mean.size


def test_initial_variance_is_exactly_init_pred_var():
    head = VIDLoss(3, 4, 5).double()
    variance = torch.nn.functional.softplus(head.log_scale) + 1e-5
    torch.testing.assert_close(variance, torch.full((5,), 5.0, dtype=torch.float64))
    head = VIDLoss(3, 4, 5, init_pred_var=0.5, eps=1e-3)
    torch.testing.assert_close(torch.log1p(head.log_scale.exp()) + 1e-3, torch.full((5,), 0.5))


def test_loss_matches_hand_computation_with_alignment():
    torch.manual_seed(0)
    for s_size, t_size in [(4, 4), (8, 4), (2, 4)]:
        head = VIDLoss(3, 5, 4).double()
        with torch.no_grad():
            head.log_scale.uniform_(-2.0, 3.0)  # distinct variances per channel
        f_s = torch.randn(3, 3, s_size, s_size, dtype=torch.float64)
        f_t = torch.randn(3, 4, t_size, t_size, dtype=torch.float64)
        expected = head_reference(head, f_s.numpy(), f_t.numpy())
        torch.testing.assert_close(head(f_s, f_t), torch.tensor(expected, dtype=torch.float64))


def test_regressor_has_no_bias_and_default_init_shapes():
    head = VIDLoss(16, 32, 8)
    assert [type(m) for m in head.regressor] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert all(head.regressor[i].bias is None for i in (0, 2, 4))
    assert [tuple(head.regressor[i].weight.shape) for i in (0, 2, 4)] == [(32, 16, 1, 1), (32, 32, 1, 1),
                                                                         (8, 32, 1, 1)]


def test_state_dict_matches_upstream():
    for key, heads in [("rd_VIDLoss", [(16, 32, 32), (32, 64, 64), (64, 128, 128)]),
                       ("rd_VIDLoss_pool", [(16, 64, 64), (64, 32, 32)])]:
        module = nn.ModuleList(VIDLoss(*channels) for channels in heads)
        assert state_shapes(module) == upstream_state_shapes(key)


def test_distiller_heads_match_upstream_names():
    """resnet8 (16/32/64) → wrn_16_2 (32/64/128) builds exactly the rd_VIDLoss heads."""
    distiller = build_distiller("vid", "resnet8", "wrn_16_2")
    assert state_shapes(distiller.vid_heads) == upstream_state_shapes("rd_VIDLoss")
    assert set(distiller.trainable_state_dict()) == {f"vid_heads.{key}" for key in upstream_state_shapes("rd_VIDLoss")}
    upstream = nn.ModuleList(VIDLoss(s, t, t) for s, t in [(16, 32), (32, 64), (64, 128)])
    distiller.vid_heads.load_state_dict(upstream.state_dict())


def test_distill_sums_one_head_per_pair():
    torch.manual_seed(1)
    distiller = build_distiller("vid", "resnet8", "resnet8")
    distiller.vid_heads = nn.ModuleList([VIDLoss(2, 3, 3), VIDLoss(4, 2, 2)])
    s_maps = [torch.randn(2, c, h, h) for c, h in [(5, 8), (2, 8), (4, 2), (6, 2)]]
    t_maps = [torch.randn(2, c, h, h) for c, h in [(5, 8), (3, 4), (2, 4)]]
    student = Outputs([*s_maps, torch.randn(2, 7)], torch.zeros(2, 10))
    teacher = Outputs([*t_maps, torch.randn(2, 9)], torch.zeros(2, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(2, 3, 32, 32), torch.zeros(2)))
    expected = sum(head_reference(head, s.double().numpy(), t.double().numpy())
                   for head, s, t in zip(distiller.vid_heads, s_maps[1:], t_maps[1:]))
    torch.testing.assert_close(terms["vid"], torch.tensor(expected, dtype=torch.float32))


def test_registered_name():
    assert distiller_zoo.get("vid") is VID


def test_training_step_cross_architecture():
    """ShuffleV1 (16/8/4) → resnet20 (32/16/8): every head pools the teacher map."""
    distiller = build_distiller("vid", "ShuffleV1", "resnet20")
    assert [tuple(head.log_scale.shape) for head in distiller.vid_heads] == [(16,), (32,), (64,)]
    check_training_step(distiller, (distiller.vid_heads,))
