"""scripts/analyze.py: t-SNE and class-correlation difference of a digits student and its teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import analyze
from tests.conftest import run_main

FAST = ["--num_workers", "0", "--batch_size", "64", "--print_freq", "1000", "--epochs", "1"]
QUICK_TSNE = ["--tsne_per_class", "12", "--device", "cpu"]


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """A 1-epoch resnet8 digits teacher and a 1-epoch KD resnet8 student of it: their last checkpoints."""
    save = tmp_path_factory.mktemp("digits_save")
    status, _ = run_main("teacher", ["--model", "resnet8", "--dataset", "digits", "--save_dir", str(save), *FAST])
    assert status == 0
    teacher = save / "teachers" / "models" / "resnet8_vanilla_digits_trial_0" / "resnet8_last.pth"
    status, _ = run_main("student", ["--model_s", "resnet8", "--path_t", str(teacher), "--distill", "kd",
                                     "--dataset", "digits", "--save_dir", str(save), "--skip_validation", *FAST])
    assert status == 0
    student = next((save / "students" / "models").glob("S:resnet8_T:resnet8_digits_kd_*")) / "resnet8_last.pth"
    return student, teacher


def _recorded_accuracy(path):
    return torch.load(path, map_location="cpu", weights_only=True)["accuracy"]


def _read(out):
    return {stem: json.loads((out / f"{stem}.json").read_text()) for stem in ("tsne", "correlation")}


def _not_blank(path):
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 10


def test_a_student_and_its_teacher_give_both_figures_and_their_numbers(digits_pair, tmp_path, capsys):
    student, teacher = digits_pair
    out = tmp_path / "analysis"
    assert analyze.main(["--path_s", str(student), "--path_t", str(teacher), "--out", str(out), *QUICK_TSNE]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["correlation.json", "correlation.png", "tsne.json", "tsne.png"]
    assert all(_not_blank(out / name) for name in ("tsne.png", "correlation.png"))
    records = _read(out)

    tsne = records["tsne"]
    assert tsne["dataset"] == "digits" and tsne["classes"] == list(range(10))
    assert len(tsne["indices"]) == len(tsne["labels"]) == len(tsne["student_points"]) == len(tsne["teacher_points"])
    assert np.bincount(tsne["labels"], minlength=10).tolist() == [12] * 10  # 12 images of each digit
    assert np.isfinite(tsne["student_points"]).all() and np.std(tsne["teacher_points"]) > 0

    correlation = records["correlation"]
    teacher_matrix, student_matrix = np.array(correlation["teacher_matrix"]), np.array(correlation["student_matrix"])
    assert teacher_matrix.shape == student_matrix.shape == (10, 10)
    off_diagonal = ~np.eye(10, dtype=bool)
    expected = np.abs(teacher_matrix - student_matrix)[off_diagonal].mean()
    assert correlation["mean_abs_difference"] == pytest.approx(expected) and expected > 0
    assert np.diag(correlation["difference"]).tolist() == [0.0] * 10
    assert correlation["student"]["test_acc"] == pytest.approx(_recorded_accuracy(student), abs=1e-4)
    assert correlation["teacher"]["test_acc"] == pytest.approx(_recorded_accuracy(teacher), abs=1e-4)
    assert str(out / "tsne.png") in capsys.readouterr().out


def test_a_network_compared_with_itself_differs_by_exactly_zero(digits_pair, tmp_path):
    _, teacher = digits_pair
    out = tmp_path / "self"
    assert analyze.main(["--path_s", str(teacher), "--path_t", str(teacher), "--out", str(out), *QUICK_TSNE,
                         "--tsne_classes", "3"]) == 0
    records = _read(out)
    assert records["correlation"]["mean_abs_difference"] == 0.0
    assert not np.any(records["correlation"]["difference"])
    assert set(records["tsne"]["labels"]) == {0, 1, 2}  # the subset of classes asked for


def test_the_default_folder_is_beside_the_student(digits_pair):
    student, teacher = digits_pair
    assert analyze.main(["--path_s", str(student), "--path_t", str(teacher), *QUICK_TSNE, "--tsne_classes", "2"]) == 0
    assert (student.parent / "analysis" / "correlation.png").is_file()


def test_class_correlation_by_hand():
    """Two images of class 0 and one of class 1, three classes: rows are class means of standardised logits."""
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 2.0, 3.0]])
    standardised = (logits - logits.mean(1, keepdims=True)) / logits.std(1, ddof=1, keepdims=True)
    matrix = analyze.class_correlation(logits, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(matrix[0], (standardised[0] + standardised[1]) / 2)
    np.testing.assert_allclose(matrix[1], standardised[2])
    np.testing.assert_allclose(matrix[1], [-1.0, 0.0, 1.0])
    assert not matrix[2].any()  # no image of class 2
    difference, mean = analyze.correlation_difference(matrix, np.zeros((3, 3)))
    assert mean == pytest.approx(np.abs(matrix[~np.eye(3, dtype=bool)]).mean())
    assert not np.diag(difference).any()


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cifar10"], "was trained on digits"),
    (["--perplexity", "0"], None),
])
def test_a_mistake_is_exit_2(digits_pair, tmp_path, capsys, extra, message):
    student, teacher = digits_pair
    argv = ["--path_s", str(student), "--path_t", str(teacher), "--out", str(tmp_path / "out"), *extra]
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            analyze.main(argv)
        assert exit_.value.code == 2
    else:
        assert analyze.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()
