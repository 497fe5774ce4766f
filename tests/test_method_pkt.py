"""PKT (METHODS.md §1.8): probabilistic knowledge transfer by hand, the tapped feature, one step."""

from __future__ import annotations

import math

import numpy as np
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.pkt import PKT, PKTDistiller
from tests.distiller_checks import build_distiller, check_training_step


def probabilities_reference(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    unit = []
    for row in x:
        scaled = row / (math.sqrt(sum(row * row)) + 1e-7)
        unit.append(np.where(np.isnan(scaled), 0.0, scaled))
    kernel = np.array([[(sum(unit[i] * unit[j]) + 1) / 2 for j in range(n)] for i in range(n)])
    return kernel / kernel.sum(axis=1, keepdims=True)


def pkt_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    p_s, p_t = probabilities_reference(f_s), probabilities_reference(f_t)
    n = p_s.shape[0]
    total = sum(p_t[i, j] * math.log((p_t[i, j] + 1e-7) / (p_s[i, j] + 1e-7))
                for i in range(n) for j in range(n))
    return total / n**2


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    f_s[2] = 0  # a zero embedding: divided by 1e-7, not NaN
    torch.testing.assert_close(PKT()(f_s, f_t),
                               torch.tensor(pkt_reference(f_s.numpy(), f_t.numpy()), dtype=torch.float64))


def test_nan_entries_are_replaced_by_zero():
    torch.manual_seed(1)
    f_s, f_t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    with_nan = f_s.clone()
    with_nan[1, 2] = float("nan")
    loss = PKT()(with_nan, f_t)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(pkt_reference(with_nan.numpy(), f_t.numpy()),
                                                  dtype=torch.float64))


def test_identical_embeddings_give_zero():
    f = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(PKT()(f, 2 * f), torch.tensor(0.0, dtype=torch.float64))


def test_distill_uses_the_penultimate_embedding():
    torch.manual_seed(2)
    distiller = build_distiller("pkt", "resnet8", "resnet8")
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 6)
    filler = torch.zeros(3, 1, 1, 1)
    student = Outputs([filler, filler, f_s], torch.zeros(3, 10))
    teacher = Outputs([filler, filler, f_t], torch.zeros(3, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3)))
    expected = pkt_reference(f_s.double().numpy(), f_t.double().numpy())
    torch.testing.assert_close(terms["pkt"], torch.tensor(expected, dtype=torch.float32))


def test_registered_name():
    assert distiller_zoo.get("pkt") is PKTDistiller


def test_training_step_cross_architecture():
    distiller = build_distiller("pkt", "ShuffleV2", "resnet20")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
