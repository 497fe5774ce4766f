"""KDSVD (METHODS.md §1.13): singular-vector relations by hand, the channel check, one step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import distiller_zoo
from dataset.batch import Batch
from distiller_zoo import Outputs
from distiller_zoo.kdsvd import KDSVD, KDSVDDistiller
from errors import UsageError
from tests.distiller_checks import build_distiller, check_training_step


def right_vectors_reference(f: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` right singular vectors ``[B, C, n]`` (unit columns) and the normalised
    first ``n`` singular values ``[B, n]``. The decomposition is the library's SVD (its sign
    choice fixes the loss); the truncation and normalisation are written out here."""
    batch, channels = f.shape[:2]
    x = f.reshape(batch, channels, -1).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v, s = vh.transpose(1, 2).numpy(), s.numpy()
    vectors = np.zeros((batch, channels, n))
    values = np.zeros((batch, n))
    for b in range(batch):
        for j in range(min(n, v.shape[2])):
            vectors[b, :, j] = v[b, :, j] / max(math.sqrt(sum(v[b, :, j] ** 2)), 1e-12)
        kept = s[b, :n]
        values[b, :len(kept)] = kept / max(math.sqrt(sum(kept**2)), 1e-12)
    return vectors[:, :, :min(n, v.shape[2])], values


def kdsvd_reference(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[float]:
    batch = g_s[0].shape[0]
    losses, previous = [], None
    for f_s, f_t in zip(g_s, g_t):
        v_t, s_t = right_vectors_reference(f_t, 1)
        v_s_all, _ = right_vectors_reference(f_s, 4)
        v_s = np.zeros_like(v_t)
        for b in range(batch):
            cosines = [sum(v_s_all[b, :, j] * v_t[b, :, 0]) for j in range(v_s_all.shape[2])]
            best = int(np.argmax(np.abs(cosines)))
            v_s[b, :, 0] = np.sign(cosines[best]) * v_s_all[b, :, best] * s_t[b, 0]
            v_t[b, :, 0] *= s_t[b, 0]
        if previous is not None:
            p_s, p_t = previous
            total = 0.0
            for b in range(batch):
                for c in range(v_s.shape[1]):
                    for d in range(p_s.shape[1]):
                        r_s = math.exp(-((v_s[b, c, 0] - p_s[b, d, 0]) ** 2) / 8)
                        r_t = math.exp(-((v_t[b, c, 0] - p_t[b, d, 0]) ** 2) / 8)
                        total += (r_s - r_t) ** 2
            losses.append(total / batch)
        previous = (v_s, v_t)
    return losses


def maps(channels: list[int], sizes: list[int], batch: int = 3) -> list[torch.Tensor]:
    return [torch.randn(batch, c, h, h, dtype=torch.float64) for c, h in zip(channels, sizes)]


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    g_s = maps([3, 5, 6], [4, 4, 2])
    g_t = maps([3, 5, 6], [4, 2, 4])  # spatial sizes may differ: V lives in channel space
    losses = KDSVD(k=1)(g_s, g_t)
    expected = kdsvd_reference(g_s, g_t)
    assert len(losses) == len(g_s) - 1 == len(expected)
    for loss, value in zip(losses, expected):
        torch.testing.assert_close(loss, torch.tensor(value, dtype=torch.float64))
        assert value > 0


def test_student_vector_sign_is_aligned_to_the_teacher():
    """Flipping the sign of a student map flips its singular vectors; the alignment undoes it."""
    torch.manual_seed(1)
    g_s, g_t = maps([3, 4], [4, 4]), maps([3, 4], [4, 4])
    flipped = [g_s[0], -g_s[1]]
    torch.testing.assert_close(KDSVD()(flipped, g_t)[0], KDSVD()(g_s, g_t)[0])


def test_student_equal_to_teacher_gives_zero():
    g = maps([3, 4, 5], [4, 4, 2])
    for loss in KDSVD()(g, [f.clone() for f in g]):
        torch.testing.assert_close(loss, torch.tensor(0.0, dtype=torch.float64))


def test_distill_sums_consecutive_layer_losses():
    torch.manual_seed(2)
    distiller = build_distiller("kdsvd", "resnet8", "resnet20")
    s_maps = [torch.randn(3, c, h, h) for c, h in [(2, 8), (3, 8), (4, 4), (5, 2)]]
    t_maps = [torch.randn(3, c, h, h) for c, h in [(7, 8), (3, 4), (4, 4), (5, 4)]]
    student = Outputs([*s_maps, torch.randn(3, 7)], torch.zeros(3, 10))
    teacher = Outputs([*t_maps, torch.randn(3, 9)], torch.zeros(3, 10))
    terms = distiller.distill(student, teacher, Batch(torch.zeros(3, 3, 32, 32), torch.zeros(3)))
    expected = sum(kdsvd_reference([s.double() for s in s_maps[1:]], [t.double() for t in t_maps[1:]]))
    torch.testing.assert_close(terms["kdsvd"], torch.tensor(expected, dtype=torch.float32))


def test_unequal_channel_counts_are_a_usage_error():
    with pytest.raises(UsageError) as caught:
        build_distiller("kdsvd", "resnet8", "resnet8x4")
    message = str(caught.value)
    assert "\n" not in message
    for fragment in ("kdsvd", "resnet8", "resnet8x4", "feat[1] student 16 vs teacher 64",
                     "feat[3] student 64 vs teacher 256", "equal widths"):
        assert fragment in message


def test_registered_name():
    assert distiller_zoo.get("kdsvd") is KDSVDDistiller


def test_training_step_same_widths():
    distiller = build_distiller("kdsvd", "resnet8", "resnet20")
    assert distiller.trainable_state_dict() == {}
    check_training_step(distiller)
