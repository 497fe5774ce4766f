"""NKD: the target and normalised non-target terms by hand, the 2023 masking fix, the Distiller, a run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dataset.batch import Batch
from distiller_zoo import NKDLoss, Weights
from distiller_zoo.nkd import NKD
from tests.conftest import run_main
from tests.distiller_checks import build_with_options, check_training_step

STUDENT = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, 0.3, -0.2, 0.1, 1.5], [3.0, -2.0, 1.0, 0.5, 2.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5, -0.5], [4.0, -1.0, 0.0, 1.0, 2.0], [0.0, 1.0, -1.0, 2.0, 0.5]]
LABELS = [1, 0, 4]


def softmax(row, temp=1.0):
    exps = [math.exp(z / temp) for z in row]
    return [e / sum(exps) for e in exps]


def nkd_by_hand(z_s, z_t, labels, temp, gamma, drop_target=True):
    """−mean_b T_y·log S_y − γ·λ²·mean_b Σ_{c≠y} T̂_c·log Ŝ_c (Ŝ, T̂ renormalised over c ≠ y at λ).

    ``drop_target=False`` is the form before upstream's masking fix: the second sum keeps class y.
    """
    target = non_target = 0.0
    for s_row, t_row, y in zip(z_s, z_t, labels):
        target += softmax(t_row)[y] * math.log(softmax(s_row)[y])
        keep = [c for c in range(len(s_row)) if c != y or not drop_target]
        s_rest = softmax([s_row[c] for c in keep], temp)
        t_rest = softmax([t_row[c] for c in keep], temp)
        non_target += sum(t * math.log(s) for t, s in zip(t_rest, s_rest))
    n = len(labels)
    return -target / n - gamma * temp**2 * non_target / n


def nkd(z_s, z_t, labels, temp=1.0, gamma=1.5):
    return NKDLoss(temp=temp, gamma=gamma)(torch.tensor(z_s, dtype=torch.float64),
                                           torch.tensor(z_t, dtype=torch.float64), torch.tensor(labels))


@pytest.mark.parametrize(("temp", "gamma"), [(1.0, 1.5), (3.0, 3.5), (2.0, 1.0)])
def test_nkd_matches_the_formula(temp, gamma):
    expected = nkd_by_hand(STUDENT, TEACHER, LABELS, temp, gamma)
    assert nkd(STUDENT, TEACHER, LABELS, temp, gamma).item() == pytest.approx(expected, rel=1e-10)


def test_follows_the_fixed_mask_not_the_pre_fix_one():
    fixed = nkd_by_hand(STUDENT, TEACHER, LABELS, 1.0, 1.5)
    before_fix = nkd_by_hand(STUDENT, TEACHER, LABELS, 1.0, 1.5, drop_target=False)
    got = nkd(STUDENT, TEACHER, LABELS).item()
    assert got == pytest.approx(fixed, rel=1e-10)
    assert got != pytest.approx(before_fix, rel=1e-3)


def test_the_target_logit_enters_only_the_target_term():
    """Raising the student's target logit lowers the target term and leaves the non-target term alone."""
    raised = [row[:] for row in STUDENT]
    for row, y in zip(raised, LABELS):
        row[y] += 2.0
    gamma_only = nkd(raised, TEACHER, LABELS, gamma=1.0).item() - nkd(raised, TEACHER, LABELS, gamma=0.0).item()
    gamma_only_before = nkd(STUDENT, TEACHER, LABELS, gamma=1.0).item() - nkd(STUDENT, TEACHER, LABELS,
                                                                              gamma=0.0).item()
    assert gamma_only == pytest.approx(gamma_only_before, rel=1e-10)
    assert nkd(raised, TEACHER, LABELS, gamma=0.0).item() < nkd(STUDENT, TEACHER, LABELS, gamma=0.0).item()


def test_soft_labels_are_reduced_to_their_arg_max():
    one_hot = F.one_hot(torch.tensor(LABELS), 5).double() * 0.8 + 0.04
    loss = NKDLoss()(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), one_hot)
    assert loss.item() == pytest.approx(nkd(STUDENT, TEACHER, LABELS).item(), rel=1e-12)


def test_teacher_target_probability_is_a_constant_weight():
    z_s = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    z_t = torch.tensor(TEACHER, dtype=torch.float64, requires_grad=True)
    NKDLoss(gamma=0.0)(z_s, z_t, torch.tensor(LABELS)).backward()
    assert z_t.grad is None or torch.count_nonzero(z_t.grad) == 0
    assert torch.count_nonzero(z_s.grad) > 0


def test_defaults_and_distiller_flags():
    loss = NKDLoss()
    assert (loss.temp, loss.gamma) == (1.0, 1.5)
    assert NKD.recommended == Weights(gamma=1.0, alpha=0.0, beta=1.0)
    torch.manual_seed(0)
    distiller, _ = build_with_options("nkd", "resnet8", "resnet20", nkd_temp=2.0, nkd_gamma=3.0)
    assert (distiller.criterion.temp, distiller.criterion.gamma) == (2.0, 3.0)
    distiller.eval()
    batch = Batch(torch.randn(4, 3, 32, 32), torch.tensor([3, 0, 9, 3]))
    _, terms = distiller(batch)
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = nkd_by_hand(z_s.double().tolist(), z_t.double().tolist(), batch.targets.tolist(), 2.0, 3.0)
    assert terms["nkd"].item() == pytest.approx(expected, rel=1e-4)
    assert distiller.trainable_state_dict() == {}


def test_training_step_reaches_the_student_only():
    check_training_step(build_with_options("nkd", "resnet8", "resnet20")[0])


def test_one_epoch_run(tmp_path, cifar100_root, cifar100_teacher):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "nkd", "--data_root",
            str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0", "--save_dir",
            str(tmp_path), "--nkd_temp", "3", "--nkd_gamma", "3.5"]
    assert run_main("student", args)[0] == 0
    folder = tmp_path / "students" / "models" / "S:resnet8_T:resnet8_cifar100_nkd_r:1.0_a:0.0_b:1.0_0"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_nkd"])
    assert record["train_loss"] == pytest.approx(record["train_cls"] + record["train_nkd"], rel=1e-4)
