"""Shared fixtures: option namespaces and tiny networks for method tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import distiller_zoo  # noqa: E402
from distiller_zoo.registry import all_arguments  # noqa: E402


def make_opt(**overrides) -> argparse.Namespace:
    """Options as train_student.py would hand them to a Distiller, with ``overrides`` applied.

    Method flags take the defaults their methods declare; ``image_size`` and ``n_data`` are
    what the driver fills in from the data set.
    """
    values = {
        "distill": "kd", "model_s": "resnet8", "model_t": "resnet20", "dataset": "cifar100",
        "gamma": 1.0, "alpha": 0.0, "beta": 0.0, "kd_T": 4.0, "batch_size": 8,
        "learning_rate": 0.05, "epochs": 1, "image_size": 32, "n_data": 64,
    }
    for arg in all_arguments():
        values[arg.dest] = arg.options.get("default")
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture
def opt_factory():
    """``opt_factory(distill='crd', nce_k=16)`` → a Namespace of options."""
    return make_opt


__all__ = ["distiller_zoo", "make_opt"]


def run_main(kind: str, args: list[str], capsys=None) -> tuple[int, str]:
    """Run train_teacher.py (``kind="teacher"``) or train_student.py in-process.

    Returns the exit status and what was written to stderr (when ``capsys`` is given).
    """
    from helper.cli import main
    from helper.options import parse_student_args, parse_teacher_args

    parse = parse_teacher_args if kind == "teacher" else parse_student_args
    status = main(parse, kind, args)
    err = capsys.readouterr().err if capsys is not None else ""
    return status, err


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    """A generated CIFAR-100 folder in the official layout (200 train, 60 test images)."""
    from tests.fakedata import write_cifar100

    return write_cifar100(tmp_path_factory.mktemp("cifar100"), n_train=200, n_test=60)


@pytest.fixture(scope="session")
def cifar100_teacher(cifar100_root, tmp_path_factory) -> Path:
    """A 1-epoch resnet8 teacher trained on the generated CIFAR-100 files; its best checkpoint."""
    save = tmp_path_factory.mktemp("teacher_save")
    status, _ = run_main("teacher", ["--model", "resnet8", "--data_root", str(cifar100_root), "--epochs", "1",
                                     "--save_dir", str(save), "--num_workers", "0", "--batch_size", "32"])
    assert status == 0
    return save / "teachers" / "models" / "resnet8_vanilla_cifar100_trial_0" / "resnet8_best.pth"
