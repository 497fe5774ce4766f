"""DistillKL (METHODS.md §1.1), the KD term every method computes and ``-a`` weighs:
``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, summed over classes and averaged over the batch.

The references below are written with explicit loops over samples and classes, and one example
has a closed form, so that a change of the temperature handling (dividing the logits by T, the
T² factor) or of the reduction (batch mean, not the mean over all elements, nor the sum) fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dataset.batch import Batch
from distiller_zoo.common import DistillKL
from tests.distiller_checks import build_with_options
from tests.fixtures import assert_built_as_upstream

# 3 samples × 5 classes; rows differ in spread so that no sample's KL is zero or dominant.
STUDENT = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.5, 2.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5, -0.5], [4.0, -1.0, 0.0, 1.0, 2.0], [0.0, 1.0, -1.0, 2.0, 0.5]]


def softmax_by_hand(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(z / temperature) for z in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl_by_hand(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ_c p_c (log p_c − log q_c)."""
    return sum(p_c * (math.log(p_c) - math.log(q_c)) for p_c, q_c in zip(p, q))


def distill_kl_by_hand(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T² times the per-sample KL of the softened teacher from the softened student, averaged over samples."""
    per_sample = [kl_by_hand(softmax_by_hand(t, temperature), softmax_by_hand(s, temperature))
                  for s, t in zip(student, teacher)]
    return temperature**2 * sum(per_sample) / len(per_sample)


def kd(student, teacher, temperature: float) -> torch.Tensor:
    """DistillKL at ``temperature`` on float64 logits given as nested lists."""
    return DistillKL(temperature)(torch.tensor(student, dtype=torch.float64),
                                  torch.tensor(teacher, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 0.5])
def test_matches_the_loop_computation(temperature):
    expected = distill_kl_by_hand(STUDENT, TEACHER, temperature)
    torch.testing.assert_close(kd(STUDENT, TEACHER, temperature), torch.tensor(expected, dtype=torch.float64))


def test_closed_form_two_class_example():
    """Teacher logits (2·ln 3, 0) at T = 2 soften to (3/4, 1/4), a zero student to (1/2, 1/2):
    KL = ¾·ln(3/2) + ¼·ln(1/2), and T²·KL = 3·ln(3/2) − ln 2 = ln(27/16)."""
    teacher, student = [[2 * math.log(3.0), 0.0]], [[0.0, 0.0]]
    torch.testing.assert_close(kd(student, teacher, 2.0), torch.tensor(math.log(27 / 16), dtype=torch.float64))
    # At T = 1 the same logits give (9/10, 1/10): T² = 1 and KL = 0.9·ln 1.8 + 0.1·ln 0.2.
    torch.testing.assert_close(kd(student, teacher, 1.0),
                               torch.tensor(0.9 * math.log(1.8) + 0.1 * math.log(0.2), dtype=torch.float64))


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_loss_is_t_squared_times_the_kl_of_the_softened_distributions(temperature):
    softened_kl = np.mean([kl_by_hand(softmax_by_hand(t, temperature), softmax_by_hand(s, temperature))
                           for s, t in zip(STUDENT, TEACHER)])
    loss = kd(STUDENT, TEACHER, temperature).item()
    assert loss == pytest.approx(temperature**2 * softened_kl, rel=1e-12)
    assert loss != pytest.approx(softened_kl, rel=1e-3)  # the T² factor is there
    assert loss != pytest.approx(temperature * softened_kl, rel=1e-3)


def test_reduction_sums_over_classes_and_averages_over_samples():
    per_sample = [kd([s], [t], 4.0).item() for s, t in zip(STUDENT, TEACHER)]
    batch = kd(STUDENT, TEACHER, 4.0).item()
    assert batch == pytest.approx(sum(per_sample) / 3, rel=1e-12)
    assert batch != pytest.approx(sum(per_sample) / 15, rel=1e-3)  # not the mean over all 3×5 elements
    assert batch != pytest.approx(sum(per_sample), rel=1e-3)  # not the sum over samples
    # Repeating the batch changes nothing: the samples are averaged.
    assert kd(STUDENT * 2, TEACHER * 2, 4.0).item() == pytest.approx(batch, rel=1e-12)


def test_zero_only_when_the_softened_distributions_agree():
    assert kd(TEACHER, TEACHER, 4.0).item() == pytest.approx(0.0, abs=1e-15)
    shifted = [[z + 7.0 for z in row] for row in TEACHER]  # softmax ignores a shift per row
    assert kd(shifted, TEACHER, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert kd(STUDENT, TEACHER, 4.0).item() > 0


def test_direction_is_teacher_relative_to_student():
    """KL is not symmetric: swapping the arguments gives another number (so the order is tested)."""
    forward, swapped = kd(STUDENT, TEACHER, 4.0).item(), kd(TEACHER, STUDENT, 4.0).item()
    assert forward == pytest.approx(distill_kl_by_hand(STUDENT, TEACHER, 4.0), rel=1e-12)
    assert swapped != pytest.approx(forward, rel=1e-3)


@pytest.mark.parametrize("entry", ["rd_DistillKL_T4", "simkd_DistillKL_T4", "dist_DistillKL_T4"])
def test_constructor_forward_and_state_are_upstreams(entry):
    assert_built_as_upstream(DistillKL(T=4), entry)


def test_distillers_kd_term_uses_the_kd_temperature_flag():
    """The ``kd`` term of a Distiller is DistillKL at ``--kd_T`` on the student's and the teacher's logits."""
    torch.manual_seed(0)
    distiller, _ = build_with_options("kd", "resnet8", "resnet8", kd_T=2.0)
    distiller.eval()
    batch = Batch(torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,)))
    _, terms = distiller(batch)
    with torch.no_grad():
        student, teacher = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = distill_kl_by_hand(student.double().tolist(), teacher.double().tolist(), 2.0)
    torch.testing.assert_close(terms["kd"].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)
