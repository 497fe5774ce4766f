"""SP (METHODS.md §1.4): similarity-preserving loss by hand, the tapped map, one training step."""

from __future__ import annotations

import math

import numpy as np
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.sp import SP, Similarity
from tests.distiller_checks import build_distiller, check_training_step


def similarity_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    """Row-normalised batch Gram matrices and their squared difference over B², by loops."""
    batch = f_s.shape[0]
    s, t = f_s.reshape(batch, -1), f_t.reshape(batch, -1)

    def normalised_gram(x: np.ndarray) -> list[list[float]]:
        gram = [[float(sum(x[i, k] * x[j, k] for k in range(x.shape[1]))) for j in range(batch)]
                for i in range(batch)]
        return [[v / max(math.sqrt(sum(w * w for w in row)), 1e-12) for v in row] for row in gram]

    g_s, g_t = normalised_gram(s), normalised_gram(t)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(batch) for j in range(batch)) / batch**2


def test_similarity_matches_hand_computation():
    torch.manual_seed(0)
    g_s = [torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)]
    g_t = [torch.randn(4, 6, 3, 3, dtype=torch.float64), torch.randn(4, 2, 2, 1, dtype=torch.float64)]
    losses = Similarity()(g_s, g_t)
    assert len(losses) == 2
    for loss, f_s, f_t in zip(losses, g_s, g_t):
        assert loss.dim() == 0
        torch.testing.assert_close(loss, torch.tensor(similarity_reference(f_s.numpy(), f_t.numpy()),
                                                      dtype=torch.float64))


def test_zero_sample_does_not_give_nan():
    """A zero row of the Gram matrix stays zero (normalisation floored at 1e-12)."""
    f_s = torch.randn(3, 4, dtype=torch.float64)
    f_s[1] = 0
    f_t = torch.randn(3, 4, dtype=torch.float64)
    loss = Similarity()([f_s], [f_t])[0]
    torch.testing.assert_close(loss, torch.tensor(similarity_reference(f_s.numpy(), f_t.numpy()),
                                                  dtype=torch.float64))


def test_distill_uses_only_the_last_map():
    torch.manual_seed(1)
    distiller = build_distiller("sp", "resnet8", "resnet8")
    s_maps = [torch.randn(3, 2, 4, 4) for _ in range(4)]
    t_maps = [torch.randn(3, 5, 2, 2) for _ in range(3)]
    student = Outputs([*s_maps, torch.randn(3, 6)], torch.zeros(3, 10))
    teacher = Outputs([*t_maps, torch.randn(3, 6)], torch.zeros(3, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3)))
    expected = similarity_reference(s_maps[-1].double().numpy(), t_maps[-1].double().numpy())
    torch.testing.assert_close(terms["similarity"], torch.tensor(expected, dtype=torch.float32))


def test_registered_names():
    assert distiller_zoo.get("similarity") is SP and distiller_zoo.get("sp") is SP


def test_training_step_cross_architecture():
    distiller = build_distiller("similarity", "wrn_16_1", "vgg8")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
