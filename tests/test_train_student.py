"""train_student.py end to end: every registered method for one epoch through the command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import distiller_zoo
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]
METHOD_FLAGS = {  # keep the runs small: fewer negatives, a 1-epoch init stage
    "crd": ["--nce_k", "64"], "rrd": ["--nce_k", "64"],
    "abound": ["--init_epochs", "1"], "factor": ["--init_epochs", "1"], "fsp": ["--init_epochs", "1"],
}


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_every_method_trains_one_epoch(method, tmp_path, cifar100_root, cifar100_teacher):
    weights = distiller_zoo.get(method).recommended
    args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", method,
            "-r", str(weights.gamma), "-a", str(weights.alpha), "-b", str(weights.beta),
            "--data_root", str(cifar100_root), "--epochs", "1", "--batch_size", "32", "--num_workers", "0",
            "--save_dir", str(tmp_path), *METHOD_FLAGS.get(method, [])]
    status, _ = run_main("student", args)
    assert status == 0
    name = (f"S:resnet8_T:resnet8_cifar100_{method}_r:{float(weights.gamma)}_a:{float(weights.alpha)}"
            f"_b:{float(weights.beta)}_0")
    folder = tmp_path / "students" / "models" / name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] and summary["teacher_acc"] is not None
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "train_acc1", "test_acc", "test_loss"):
        assert math.isfinite(record[key]), key
    # the logged loss is the flags' weighting of the logged terms: -r on cls (and MLKD's cls_strong),
    # -a on kd, -b on the rest
    terms = {key.removeprefix("train_"): value for key, value in record.items()
             if key.startswith("train_") and key not in ("train_loss", "train_acc1", "train_acc5")}
    label_terms = {name for name in terms if name == "cls" or name.startswith("cls_")}
    labels = sum(terms[name] for name in label_terms)
    own = {name: value for name, value in terms.items() if name != "kd" and name not in label_terms}
    if method != "itrd":  # ITRD's two terms carry β·λ_corr and β·λ_mutual
        expected = weights.gamma * labels + weights.alpha * terms["kd"] + weights.beta * sum(own.values())
        assert record["train_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert (folder / "resnet8_best.pth").is_file() and (folder / "resnet8_last.pth").is_file()


def test_both_flag_spellings_name_the_same_weights(tmp_path, cifar100_root, cifar100_teacher):
    from helper.options import parse_student_args

    base = ["--path_t", str(cifar100_teacher), "--data_root", str(cifar100_root)]
    rd = parse_student_args([*base, "-r", "0.1", "-a", "0.9", "-b", "0"])
    sk = parse_student_args([*base, "-c", "0.1", "-d", "0.9", "-b", "0"])
    assert (rd.gamma, rd.alpha, rd.beta) == (sk.gamma, sk.alpha, sk.beta) == (0.1, 0.9, 0.0)


def test_defaults_are_the_methods_recommendation(cifar100_root, cifar100_teacher):
    from helper.options import parse_student_args

    opt = parse_student_args(["--path_t", str(cifar100_teacher), "--distill", "crd"])
    assert (opt.alpha, opt.beta) == (0.0, 0.8)


QUOTED_ONLY = {"dist"}  # DIST's name is also torch.distributed's customary alias


def test_no_method_name_outside_distiller_zoo():
    """The loop and the entry scripts know no method (ARCHITECTURE.md, the one rule)."""
    names = set(distiller_zoo.DISTILLERS) | set(distiller_zoo.registry.ALIASES)
    files = [*REPO.glob("helper/*.py"), *REPO.glob("train_*.py"), *REPO.glob("dataset/*.py")]
    offenders = []
    for path in files:
        text = path.read_text()
        for name in names:
            quoted_only = len(name) <= 2 or name in QUOTED_ONLY
            pattern = rf"[\"']{name}[\"']" if quoted_only else rf"\b{name}\b"
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {name}")
    assert offenders == []
