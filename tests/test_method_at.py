"""AT (METHODS.md §1.3): attention loss by hand, pairing and alignment, one training step."""

from __future__ import annotations

import math

import numpy as np
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.at import AT, Attention
from tests.distiller_checks import adaptive_avg_pool_reference, build_distiller, check_training_step


def attention_reference(f: np.ndarray) -> np.ndarray:
    """``normalize(mean_C(f²))`` per sample, by loops (norm floored at 1e-12)."""
    batch, channels, height, width = f.shape
    out = np.zeros((batch, height * width))
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                out[b, h * width + w] = sum(f[b, c, h, w] ** 2 for c in range(channels)) / channels
        out[b] /= max(math.sqrt(sum(v * v for v in out[b])), 1e-12)
    return out


def pair_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    if f_s.shape[2] > f_t.shape[2]:
        f_s = adaptive_avg_pool_reference(f_s, f_t.shape[2])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = adaptive_avg_pool_reference(f_t, f_s.shape[2])
    a_s, a_t = attention_reference(f_s), attention_reference(f_t)
    return float(np.mean((a_s - a_t) ** 2))


def test_attention_matches_hand_computation_with_alignment():
    torch.manual_seed(0)
    g_s = [torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64),
           torch.randn(3, 3, 4, 4, dtype=torch.float64)]
    g_t = [torch.randn(3, 5, 4, 4, dtype=torch.float64), torch.randn(3, 3, 6, 6, dtype=torch.float64),
           torch.randn(3, 6, 4, 4, dtype=torch.float64)]
    losses = Attention(p=2)(g_s, g_t)
    assert len(losses) == 3
    for loss, f_s, f_t in zip(losses, g_s, g_t):
        torch.testing.assert_close(loss, torch.tensor(pair_reference(f_s.numpy(), f_t.numpy()),
                                                      dtype=torch.float64))


def test_attention_uses_the_plain_power_without_abs():
    """p = 3 keeps the sign of negative activations (no ``abs``), unlike |f|^p."""
    f_s = torch.tensor([[[[-1.0, 2.0]], [[-1.0, 0.5]]]], dtype=torch.float64)
    f_t = torch.tensor([[[[1.0, 2.0]], [[1.0, 0.5]]]], dtype=torch.float64)
    loss = Attention(p=3)([f_s], [f_t])[0]
    a_s = np.array([-1.0, (8 + 0.125) / 2])
    a_t = np.array([1.0, (8 + 0.125) / 2])
    a_s, a_t = a_s / np.linalg.norm(a_s), a_t / np.linalg.norm(a_t)
    torch.testing.assert_close(loss, torch.tensor(np.mean((a_s - a_t) ** 2), dtype=torch.float64))
    assert loss > 0


def test_distill_sums_intermediate_pairs_truncated_to_the_shorter_list():
    """feat[1:-1] zipped: the student's 4th map has no teacher partner; feat[0] and feat[-1] unused."""
    torch.manual_seed(1)
    distiller = build_distiller("at", "resnet8", "resnet8")
    s_maps = [torch.randn(2, c, h, h) for c, h in [(3, 8), (4, 8), (2, 4), (5, 2), (3, 2)]]
    t_maps = [torch.randn(2, c, h, h) for c, h in [(3, 8), (6, 4), (3, 4), (2, 4)]]
    student = Outputs([*s_maps, torch.randn(2, 7)], torch.zeros(2, 10))
    teacher = Outputs([*t_maps, torch.randn(2, 9)], torch.zeros(2, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(2, 3, 32, 32), torch.zeros(2)))
    expected = sum(pair_reference(s.double().numpy(), t.double().numpy())
                   for s, t in zip(s_maps[1:], t_maps[1:]))
    torch.testing.assert_close(terms["attention"], torch.tensor(expected, dtype=torch.float32))


def test_registered_names():
    assert distiller_zoo.get("attention") is AT and distiller_zoo.get("at") is AT


def test_training_step_cross_architecture():
    """vgg8 (4 maps, 16→4) → resnet20 (3 maps, 32→8): pooling on the teacher side, 3 pairs."""
    distiller = build_distiller("attention", "vgg8", "resnet20")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
