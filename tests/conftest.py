"""Shared fixtures: option namespaces and tiny networks for method tests."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import distiller_zoo
from distiller_zoo.base import DistillSetup, Weights
from distiller_zoo.registry import all_arguments

REPO = Path(__file__).resolve().parents[1]


def make_opt(**overrides) -> argparse.Namespace:
    """Options as train_student.py would parse them, with ``overrides`` applied.

    Method flags take the defaults their methods declare; ``image_size`` and ``n_data`` stand
    for what the data set tells the driver (see :func:`make_setup`).
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


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: tiny batches run fastest so, and do not stall when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def opt_factory():
    """``opt_factory(distill='crd', nce_k=16)`` → a Namespace of options."""
    return make_opt


def make_setup(opt: argparse.Namespace) -> DistillSetup:
    """The DistillSetup the driver would give a Distiller for these options."""
    return DistillSetup(image_size=opt.image_size, num_train=opt.n_data, batch_size=opt.batch_size,
                        learning_rate=opt.learning_rate, weights=Weights(opt.gamma, opt.alpha, opt.beta),
                        kd_T=opt.kd_T, student_name=opt.model_s, teacher_name=opt.model_t)


def build_from_options(opt: argparse.Namespace, student, teacher) -> distiller_zoo.Distiller:
    """``opt.distill``'s Distiller around two networks, built as the driver builds it."""
    return distiller_zoo.build(opt.distill, student, teacher, make_setup(opt), vars(opt))


__all__ = ["build_from_options", "distiller_zoo", "make_opt", "make_setup"]


def run_main(kind: str, args: list[str], capsys=None) -> tuple[int, str]:
    """Run train_teacher.py (``kind="teacher"``) or train_student.py in-process.

    Returns the exit status and what was written to stderr (when ``capsys`` is given).
    """
    from helper.cli import main
    from helper.options import parse_student_pack, parse_teacher_args

    parse = parse_teacher_args if kind == "teacher" else parse_student_pack
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
