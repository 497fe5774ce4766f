"""NST (METHODS.md §1.12): squared MMD with the degree-2 polynomial kernel by hand, one step."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.nst import NST, NSTLoss
from tests.distiller_checks import adaptive_avg_pool_reference, build_distiller, check_training_step


def channels_reference(f: np.ndarray) -> np.ndarray:
    """``[B, C, HW]`` with every channel vector divided by its norm (floored at 1e-12)."""
    x = f.reshape(f.shape[0], f.shape[1], -1)
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = x[b, c] / max(math.sqrt(sum(x[b, c] ** 2)), 1e-12)
    return out


def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the batch and both channel indices of ⟨a_c, b_c'⟩²."""
    values = [sum(a[n, i] * b[n, j]) ** 2 for n in range(a.shape[0])
              for i in range(a.shape[1]) for j in range(b.shape[1])]
    return float(np.mean(values))


def pair_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    if f_s.shape[2] > f_t.shape[2]:
        f_s = adaptive_avg_pool_reference(f_s, f_t.shape[2])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = adaptive_avg_pool_reference(f_t, f_s.shape[2])
    s, t = channels_reference(f_s), channels_reference(f_t)
    return mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)


def test_loss_matches_hand_computation_with_alignment():
    torch.manual_seed(0)
    g_s = [torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 2, 8, 8, dtype=torch.float64),
           torch.randn(2, 4, 2, 2, dtype=torch.float64)]
    g_t = [torch.randn(2, 5, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64),
           torch.randn(2, 2, 4, 4, dtype=torch.float64)]
    g_s[0][1, 2] = 0  # a dead channel: normalised to zero, not NaN
    losses = NSTLoss()(g_s, g_t)
    assert len(losses) == 3
    for loss, f_s, f_t in zip(losses, g_s, g_t):
        torch.testing.assert_close(loss, torch.tensor(pair_reference(f_s.numpy(), f_t.numpy()),
                                                      dtype=torch.float64))


def test_teacher_kernel_term_is_detached():
    """Only the cross term −2·mean(K_st) carries gradient to the teacher map."""
    torch.manual_seed(1)
    f_s = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    f_t = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    NSTLoss()([f_s], [f_t])[0].backward()
    t_leaf = f_t.detach().clone().requires_grad_(True)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(t_leaf.flatten(2), dim=2)
    cross = torch.einsum("bik,bjk->bij", s, t).pow(2).mean()
    (-2 * cross).backward()
    torch.testing.assert_close(f_t.grad, t_leaf.grad)


def test_identical_maps_give_zero():
    f = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(NSTLoss()([f], [f.clone()])[0], torch.tensor(0.0, dtype=torch.float64))


def test_distill_sums_intermediate_pairs():
    torch.manual_seed(2)
    distiller = build_distiller("nst", "resnet8", "resnet8")
    s_maps = [torch.randn(2, c, h, h) for c, h in [(3, 8), (4, 8), (2, 4), (5, 2)]]
    t_maps = [torch.randn(2, c, h, h) for c, h in [(3, 8), (6, 4), (3, 4), (2, 4), (3, 2)]]
    student = Outputs([*s_maps, torch.randn(2, 7)], torch.zeros(2, 10))
    teacher = Outputs([*t_maps, torch.randn(2, 9)], torch.zeros(2, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(2, 3, 32, 32), torch.zeros(2)))
    expected = sum(pair_reference(s.double().numpy(), t.double().numpy())
                   for s, t in zip(s_maps[1:], t_maps[1:]))
    torch.testing.assert_close(terms["nst"], torch.tensor(expected, dtype=torch.float32))


def test_registered_name():
    assert distiller_zoo.get("nst") is NST


def test_training_step_cross_architecture():
    distiller = build_distiller("nst", "resnet8", "vgg8")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
