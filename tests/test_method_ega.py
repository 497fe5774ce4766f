"""EGA: the graph loss by hand, its symmetry and invariances, the Distiller, one run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo import EGA
from distiller_zoo.ega import EGADistiller
from errors import UsageError
from tests.conftest import run_main
from tests.distiller_checks import build_distiller, check_training_step


def pearson_by_hand(rows):
    """Pearson correlation of every pair of rows, in plain Python."""
    means = [sum(r) / len(r) for r in rows]
    centred = [[v - m for v in r] for r, m in zip(rows, means)]
    norms = [math.sqrt(sum(v * v for v in r)) for r in centred]
    return [[sum(a * b for a, b in zip(x, y)) / (nx * ny) for y, ny in zip(centred, norms)]
            for x, nx in zip(centred, norms)]


def frobenius(matrix):
    return math.sqrt(sum(v * v for row in matrix for v in row))


def ega_by_hand(f_s, f_t, node_weight=1.0, edge_weight=0.3):
    """‖N − I‖_F · w_node + ‖E_t − E_s‖_F · w_edge over the correlation graph of [f_s; f_t]."""
    n = len(f_s)
    c = pearson_by_hand(f_s.tolist() + f_t.tolist())
    nodes = [[c[i][n + j] - (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    edges = [[c[n + i][n + j] - c[i][j] for j in range(n)] for i in range(n)]
    return node_weight * frobenius(nodes) + edge_weight * frobenius(edges)


def test_ega_loss_by_hand():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 6), torch.randn(4, 6)
    assert EGA()(f_s, f_t).item() == pytest.approx(ega_by_hand(f_s, f_t), rel=1e-5)
    assert EGA(0.8, 0.5)(f_s, f_t).item() == pytest.approx(ega_by_hand(f_s, f_t, 0.8, 0.5), rel=1e-5)
    assert (EGA().node_weight, EGA().edge_weight) == (1.0, 0.3)


def test_symmetric_in_its_arguments_and_blind_to_each_rows_scale_and_shift():
    """Upstream names its arguments (ft, fs) but is called (f_s, f_t): the order does not matter."""
    torch.manual_seed(1)
    f_s, f_t = torch.randn(5, 8), torch.randn(5, 8)
    loss = EGA()(f_s, f_t)
    torch.testing.assert_close(EGA()(f_t, f_s), loss)
    rescaled = f_s * torch.rand(5, 1).add(0.5) + torch.randn(5, 1)
    torch.testing.assert_close(EGA()(rescaled, f_t), loss, rtol=1e-4, atol=1e-5)


def test_identical_embeddings_leave_only_the_off_diagonal_node_term():
    torch.manual_seed(2)
    f = torch.randn(3, 5)
    c = pearson_by_hand(f.tolist())
    expected = frobenius([[c[i][j] for j in range(3) if j != i] for i in range(3)])
    assert EGA()(f, f.clone()).item() == pytest.approx(expected, rel=1e-5)


def test_distiller_term_on_the_embeddings_and_its_flags():
    torch.manual_seed(3)
    distiller = build_distiller("ega", "resnet8", "resnet20", ega_node_weight=0.8, ega_edge_weight=0.5)
    assert isinstance(distiller, EGADistiller)
    distiller.train()
    images = torch.randn(4, 3, 32, 32)
    _, terms = distiller(Batch(images, torch.randint(0, 10, (4,))))
    student_features, _ = distiller.student(images, is_feat=True)
    with torch.no_grad():
        teacher_features, _ = distiller.teacher(images, is_feat=True)
    expected = ega_by_hand(student_features[-1].detach(), teacher_features[-1], 0.8, 0.5)
    assert terms["ega"].item() == pytest.approx(expected, rel=1e-5)


def test_embeddings_of_different_widths_are_refused():
    with pytest.raises(UsageError, match="the student's is 64, the teacher's 256"):
        build_distiller("ega", "resnet8", "resnet8x4")


def test_gradients_reach_the_student_never_the_teacher():
    distiller = build_distiller("ega", "resnet8", "resnet20")
    check_training_step(distiller)
    assert distiller.trainable_state_dict() == {}


def test_one_epoch_run_logs_the_term(tmp_path, cifar100_root, cifar100_teacher):
    status, _ = run_main("student", ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "ega",
                                     "--data_root", str(cifar100_root), "--epochs", "1", "--batch_size", "32",
                                     "--num_workers", "0", "--save_dir", str(tmp_path)])
    assert status == 0
    [metrics] = tmp_path.glob("students/models/*ega*/metrics.jsonl")
    record = json.loads(metrics.read_text().splitlines()[-1])
    assert record["train_ega"] > 0
    assert record["train_loss"] == pytest.approx(record["train_cls"] + record["train_ega"], rel=1e-4)
