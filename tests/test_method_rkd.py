"""RKD (METHODS.md §1.7): distance and angle losses by hand, teacher without gradient, one step."""

from __future__ import annotations

import math

import numpy as np
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.rkd import RKD, RKDLoss
from tests.distiller_checks import build_distiller, check_training_step


def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a - b).ravel()
    return float(np.mean([0.5 * d * d if d < 1 else d - 0.5 for d in diff]))


def distances_reference(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                squared = sum(x[i] ** 2) + sum(x[j] ** 2) - 2 * sum(x[i] * x[j])
                d[i, j] = math.sqrt(max(squared, 1e-12))
    return d / d[d > 0].mean()


def angles_reference(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]

    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(math.sqrt(sum(v * v)), 1e-12)

    a = np.zeros((n, n, n))
    for i in range(n):
        for j in range(n):
            for k in range(n):
                a[i, j, k] = sum(unit(x[j] - x[i]) * unit(x[k] - x[i]))
    return a


def rkd_reference(f_s: np.ndarray, f_t: np.ndarray, w_d: float = 25, w_a: float = 50) -> float:
    s, t = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    return (w_d * smooth_l1(distances_reference(s), distances_reference(t))
            + w_a * smooth_l1(angles_reference(s), angles_reference(t)))


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    # Large teacher values put some distance differences above the Huber threshold of 1.
    f_s, f_t = torch.randn(4, 5, dtype=torch.float64), 3 * torch.randn(4, 7, dtype=torch.float64)
    f_t[3] = f_t[0] + 1e-9  # a near-duplicate sample: its distance is clamped, not NaN
    expected = rkd_reference(f_s.numpy(), f_t.numpy())
    torch.testing.assert_close(RKDLoss()(f_s, f_t), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(RKDLoss(w_d=2, w_a=0.5)(f_s, f_t),
                               torch.tensor(rkd_reference(f_s.numpy(), f_t.numpy(), 2, 0.5),
                                            dtype=torch.float64))


def test_maps_are_flattened():
    torch.manual_seed(1)
    f_s, f_t = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.randn(3, 4, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(RKDLoss()(f_s, f_t),
                               torch.tensor(rkd_reference(f_s.numpy(), f_t.numpy()), dtype=torch.float64))


def test_teacher_side_gets_no_gradient():
    f_s = torch.randn(4, 3, requires_grad=True)
    f_t = torch.randn(4, 3, requires_grad=True)
    RKDLoss()(f_s, f_t).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and torch.isfinite(f_s.grad).all() and f_s.grad.abs().sum() > 0


def test_single_sample_batch_is_finite():
    assert RKDLoss()(torch.randn(1, 4), torch.randn(1, 4)).item() == 0.0


def test_distill_uses_the_penultimate_embedding():
    torch.manual_seed(2)
    distiller = build_distiller("rkd", "resnet8", "resnet8")
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 6)
    filler = torch.zeros(3, 1, 1, 1)
    student = Outputs([filler, filler, f_s], torch.zeros(3, 10))
    teacher = Outputs([filler, filler, f_t], torch.zeros(3, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3)))
    expected = rkd_reference(f_s.double().numpy(), f_t.double().numpy())
    torch.testing.assert_close(terms["rkd"], torch.tensor(expected, dtype=torch.float32))


def test_registered_name():
    assert distiller_zoo.get("rkd") is RKD


def test_training_step_cross_architecture():
    distiller = build_distiller("rkd", "wrn_16_1", "resnet8x4")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
