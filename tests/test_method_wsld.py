"""WSLD: the sample weights and the weighted soft cross-entropy by hand, upstream's call, the Distiller, a run."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dataset.batch import Batch
from distiller_zoo import Weights, WSLDLoss, cross_entropy_with_label_smoothing
from distiller_zoo.wsld import WSLD
from tests.conftest import run_main
from tests.distiller_checks import build_with_options, check_training_step

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 0.1], [3.0, -2.0, 1.0, 0.5], [-1.0, 0.0, 4.0, 0.2]]
TEACHER = [[2.0, 1.0, 0.0, 0.5], [4.0, -1.0, 0.0, 1.0], [0.0, 1.0, -1.0, 2.0], [0.5, 0.5, 3.0, -2.0]]
LABELS = [0, 0, 3, 2]


def softmax(row, temp=1.0):
    exps = [math.exp(z / temp) for z in row]
    return [e / sum(exps) for e in exps]


def weight_by_hand(s_row, t_row, y):
    """1 − exp(−max(CE_s / (CE_t + 1e-7), 0)) with both CEs at temperature 1."""
    ce_s, ce_t = -math.log(softmax(s_row)[y]), -math.log(softmax(t_row)[y])
    return 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))


def soft_by_hand(z_s, z_t, labels, temp):
    """T² · mean over samples of w · (−Σ_c p_t(c) log p_s(c)) at temperature T."""
    total = 0.0
    for s_row, t_row, y in zip(z_s, z_t, labels):
        p_s, p_t = softmax(s_row, temp), softmax(t_row, temp)
        total += weight_by_hand(s_row, t_row, y) * -sum(t * math.log(s) for t, s in zip(p_t, p_s))
    return temp**2 * total / len(labels)


def ce_by_hand(z_s, labels):
    return -sum(math.log(softmax(row)[y]) for row, y in zip(z_s, labels)) / len(labels)


def tensors():
    return (torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64),
            torch.tensor(LABELS))


@pytest.mark.parametrize("temp", [2.0, 4.0, 1.0])
def test_soft_term_and_upstream_loss_match_the_formula(temp):
    fc_t, fc_s, label = tensors()
    loss = WSLDLoss(argparse.Namespace(nce_t=temp))
    soft = soft_by_hand(STUDENT, TEACHER, LABELS, temp)
    assert loss.soft_loss(fc_t, fc_s, label).item() == pytest.approx(soft, rel=1e-10)
    assert loss(fc_t, fc_s, label).item() == pytest.approx(ce_by_hand(STUDENT, LABELS) + 2.5 * soft, rel=1e-10)


def test_sample_weights_by_hand_and_their_meaning():
    fc_t, fc_s, label = tensors()
    weights = WSLDLoss(argparse.Namespace(nce_t=2.0)).sample_weights(fc_t, fc_s, label).squeeze(1).tolist()
    expected = [weight_by_hand(s, t, y) for s, t, y in zip(STUDENT, TEACHER, LABELS)]
    assert weights == pytest.approx(expected, rel=1e-10)
    assert all(0 < w < 1 for w in weights)
    # sample 1: the student is far less sure of its label than the teacher (CE 1.5 vs 0.07): weight ≈ 1;
    # sample 3: the student is surer than the teacher (CE 0.05 vs 0.16): the soft label counts less
    assert weights[1] > 0.99 and weights[3] < 0.5


def test_the_weights_pass_no_gradient():
    fc_t, fc_s, label = tensors()
    fc_s.requires_grad_(True)
    loss = WSLDLoss(argparse.Namespace(nce_t=2.0))
    loss.soft_loss(fc_t, fc_s, label).backward()
    weights = loss.sample_weights(fc_t, fc_s.detach(), label)
    p_s, p_t = F.softmax(fc_s.detach() / 2.0, 1), F.softmax(fc_t / 2.0, 1)
    # d/dz_s of T²·mean(w·H(p_t, p_s)) with w constant is T·w·(p_s − p_t)/B
    expected = 2.0 * weights * (p_s - p_t) / fc_s.shape[0]
    torch.testing.assert_close(fc_s.grad, expected)


def test_teacher_comes_first_as_upstream():
    fc_t, fc_s, label = tensors()
    loss = WSLDLoss(argparse.Namespace(nce_t=2.0))
    assert loss(fc_s, fc_t, label).item() != pytest.approx(loss(fc_t, fc_s, label).item(), rel=1e-3)


def test_reads_its_temperature_from_opt_nce_t_and_has_no_state():
    loss = WSLDLoss(argparse.Namespace(nce_t=3.0))
    assert (loss.T, loss.alpha) == (3.0, 2.5)
    assert list(loss.state_dict()) == []


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_with_label_smoothing_by_hand(smoothing):
    _, fc_s, label = tensors()
    total = 0.0
    for row, y in zip(STUDENT, LABELS):
        target = [(1 - smoothing) * (c == y) + smoothing / len(row) for c in range(len(row))]
        total -= sum(q * math.log(p) for q, p in zip(target, softmax(row)))
    got = cross_entropy_with_label_smoothing(fc_s, label, smoothing).item()
    assert got == pytest.approx(total / len(LABELS), rel=1e-10)
    if smoothing == 0.0:
        assert got == pytest.approx(F.cross_entropy(fc_s, label).item(), rel=1e-12)


def test_distiller_term_is_the_soft_part_at_the_temperature_flag():
    assert WSLD.recommended == Weights(gamma=1.0, alpha=0.0, beta=2.5)
    torch.manual_seed(0)
    distiller, _ = build_with_options("wsld", "resnet8", "resnet20", beta=2.5, wsld_temp=4.0)
    assert distiller.criterion.T == 4.0
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0, "wsld": 2.5}
    distiller.eval()
    batch = Batch(torch.randn(4, 3, 32, 32), torch.tensor([3, 0, 9, 3]))
    _, terms = distiller(batch)
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = soft_by_hand(z_s.double().tolist(), z_t.double().tolist(), batch.targets.tolist(), 4.0)
    assert terms["wsld"].item() == pytest.approx(expected, rel=1e-4)
    assert terms["cls"].item() == pytest.approx(ce_by_hand(z_s.double().tolist(), batch.targets.tolist()), rel=1e-4)
    assert distiller.trainable_state_dict() == {}


def test_training_step_reaches_the_student_only():
    check_training_step(build_with_options("wsld", "resnet8", "resnet20")[0])


def test_one_epoch_run(tmp_path, cifar100_root, cifar100_teacher):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "wsld", "--data_root",
            str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0", "--save_dir",
            str(tmp_path)]
    assert run_main("student", args)[0] == 0
    folder = tmp_path / "students" / "models" / "S:resnet8_T:resnet8_cifar100_wsld_r:1.0_a:0.0_b:2.5_0"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_wsld"]) and record["train_wsld"] > 0
    assert record["train_loss"] == pytest.approx(record["train_cls"] + 2.5 * record["train_wsld"], rel=1e-4)
