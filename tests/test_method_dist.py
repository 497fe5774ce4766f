"""DIST: the inter- and intra-class Pearson relations by hand, the recipe flags, the Distiller, a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo import DIST, Weights
from distiller_zoo.common import DistillKL, DistillKL_logit_stand, normalize
from distiller_zoo.dist import DISTDistiller
from tests.conftest import run_main
from tests.distiller_checks import build_with_options, check_training_step

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 0.1], [3.0, -2.0, 1.0, 0.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5], [4.0, -1.0, 0.0, 1.0], [0.0, 1.0, -1.0, 2.0]]


def softmax(row, tau):
    exps = [math.exp(z / tau) for z in row]
    return [e / sum(exps) for e in exps]


def pearson(u, v, eps=1e-8):
    """cos(u − ū, v − v̄) with ``eps`` added to the product of the norms, as DIST's code."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [a - mu for a in u], [b - mv for b in v]
    num = sum(a * b for a, b in zip(du, dv))
    return num / (math.sqrt(sum(a * a for a in du)) * math.sqrt(sum(b * b for b in dv)) + eps)


def dist_by_hand(z_s, z_t, beta, gamma, tau):
    """τ²·β·(1 − mean over samples of ρ) + τ²·γ·(1 − mean over classes of ρ), on softmax(z/τ)."""
    y_s = [softmax(row, tau) for row in z_s]
    y_t = [softmax(row, tau) for row in z_t]
    inter = 1 - sum(pearson(s, t) for s, t in zip(y_s, y_t)) / len(y_s)
    columns = range(len(y_s[0]))
    intra = 1 - sum(pearson([r[c] for r in y_s], [r[c] for r in y_t]) for c in columns) / len(columns)
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (2.0, 0.5, 2.0), (0.0, 1.0, 4.0)])
def test_dist_matches_the_formula(beta, gamma, tau):
    loss = DIST(beta=beta, gamma=gamma, tau=tau)(torch.tensor(STUDENT, dtype=torch.float64),
                                                 torch.tensor(TEACHER, dtype=torch.float64))
    assert loss.item() == pytest.approx(dist_by_hand(STUDENT, TEACHER, beta, gamma, tau), rel=1e-10)


def test_inter_and_intra_relations_are_different_terms():
    z_s, z_t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    inter = DIST(beta=1.0, gamma=0.0, tau=4.0)(z_s, z_t).item()
    intra = DIST(beta=0.0, gamma=1.0, tau=4.0)(z_s, z_t).item()
    assert inter == pytest.approx(dist_by_hand(STUDENT, TEACHER, 1.0, 0.0, 4.0), rel=1e-10)
    assert intra == pytest.approx(dist_by_hand(STUDENT, TEACHER, 0.0, 1.0, 4.0), rel=1e-10)
    assert inter != pytest.approx(intra, rel=1e-2)
    assert DIST(beta=1.0, gamma=1.0, tau=4.0)(z_s, z_t).item() == pytest.approx(inter + intra, rel=1e-12)


def test_near_zero_for_the_teachers_own_logits_and_a_shift_of_them():
    """Only the 1e-8 of the correlation's denominator keeps identical predictions off exactly 0."""
    z_t = torch.tensor(TEACHER, dtype=torch.float64)
    same = DIST(tau=4.0)(z_t, z_t).item()
    assert same == pytest.approx(dist_by_hand(TEACHER, TEACHER, 1.0, 1.0, 4.0), rel=1e-6)
    assert 0 < same < 1e-3
    shifted = [[z + 3.0 for z in row] for row in TEACHER]  # softmax ignores a shift of a row
    assert DIST(tau=4.0)(torch.tensor(shifted, dtype=torch.float64), z_t).item() == pytest.approx(same, rel=1e-6)
    assert DIST(tau=4.0)(torch.tensor(STUDENT, dtype=torch.float64), z_t).item() > 100 * same


def test_defaults_are_the_constructors_of_the_authors_code():
    loss = DIST()
    assert (loss.beta, loss.gamma, loss.tau) == (1.0, 1.0, 1.0)
    assert list(loss.state_dict()) == []


def test_distiller_uses_the_recipe_flags_and_the_logits():
    torch.manual_seed(0)
    distiller, _ = build_with_options("dist", "resnet8", "resnet20", beta=2.0, dist_beta=0.5, dist_gamma=1.5,
                                      dist_tau=3.0)
    assert isinstance(distiller, DISTDistiller)
    assert DISTDistiller.recommended == Weights(gamma=1.0, alpha=0.0, beta=2.0)
    assert (distiller.criterion.beta, distiller.criterion.gamma, distiller.criterion.tau) == (0.5, 1.5, 3.0)
    assert distiller.loss_weights == {"cls": 1.0, "kd": 0.0, "dist": 2.0}
    distiller.eval()
    batch = Batch(torch.randn(5, 3, 32, 32), torch.randint(10, (5,)))
    _, terms = distiller(batch)
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = dist_by_hand(z_s.double().tolist(), z_t.double().tolist(), 0.5, 1.5, 3.0)
    assert terms["dist"].item() == pytest.approx(expected, rel=1e-4)
    assert type(distiller.kd_loss) is DistillKL
    assert distiller.trainable_state_dict() == {}


def test_logit_stand_standardises_both_networks_logits_first():
    torch.manual_seed(1)
    distiller, _ = build_with_options("dist", "resnet8", "resnet20", logit_stand=True)
    assert isinstance(distiller.kd_loss, DistillKL_logit_stand)
    distiller.eval()
    batch = Batch(torch.randn(4, 3, 32, 32), torch.randint(10, (4,)))
    _, terms = distiller(batch)
    with torch.no_grad():
        z_s, z_t = distiller.student(batch.images), distiller.teacher(batch.images)
    expected = dist_by_hand(normalize(z_s).double().tolist(), normalize(z_t).double().tolist(), 1.0, 1.0, 4.0)
    plain = dist_by_hand(z_s.double().tolist(), z_t.double().tolist(), 1.0, 1.0, 4.0)
    assert terms["dist"].item() == pytest.approx(expected, rel=1e-4)
    assert expected != pytest.approx(plain, rel=1e-3)


def test_training_step_reaches_the_student_only():
    check_training_step(build_with_options("dist", "resnet8", "resnet20")[0])


def test_one_epoch_run_with_the_recipe(tmp_path, cifar100_root, cifar100_teacher):
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "dist", "--data_root",
            str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0", "--save_dir",
            str(tmp_path), "--dist_tau", "4", "--logit_stand"]
    status, _ = run_main("student", args)
    assert status == 0
    folder = tmp_path / "students" / "models" / "S:resnet8_T:resnet8_cifar100_dist_r:1.0_a:0.0_b:2.0_0"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_dist"]) and record["train_dist"] > 0
    assert record["train_loss"] == pytest.approx(record["train_cls"] + 2.0 * record["train_dist"], rel=1e-4)
