"""The error contract: a user mistake exits 2 with one line on stderr, no traceback, no run folder."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import model_dict
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--num_workers", "0", "--batch_size", "32"]


class Payload:
    """An arbitrary object: a file holding it needs full unpickling, which weights_only refuses."""


def _rd_teacher(folder: Path, arch: str = "resnet8", num_classes: int = 100) -> Path:
    """A teacher file as RepDistiller writes it: ``<arch>_vanilla/ckpt_epoch_240.pth`` = {'model': ...}."""
    folder.mkdir(parents=True)
    path = folder / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model_dict[arch](num_classes=num_classes).state_dict()}, path)
    return path


def _case(name, kind, args_fn, message):
    return pytest.param(kind, args_fn, message, id=name)


def _teacher_args(root, save):
    return ["--model", "resnet8", "--data_root", str(root), "--save_dir", str(save), *FAST]


def _student_args(root, save, teacher, *extra):
    return ["--path_t", str(teacher), "--model_s", "resnet8", "--data_root", str(root),
            "--save_dir", str(save), *FAST, *extra]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


CASES = [
    _case("unknown model", "teacher",
          lambda t, r, s, c: ["--model", "resnet9000", "--data_root", str(r), "--save_dir", str(s)], "unknown model"),
    _case("unknown method", "student", lambda t, r, s, c: _student_args(r, s, c, "--distill", "telepathy"),
          "unknown method"),
    _case("unknown student", "student", lambda t, r, s, c: [*_student_args(r, s, c), "--model_s", "nope"],
          "unknown model"),
    _case("data root missing", "teacher", lambda t, r, s, c: _teacher_args(t / "nowhere", s), "cifar-100-python"),
    _case("data root in the wrong layout", "teacher",
          lambda t, r, s, c: _teacher_args(_write(t / "flat" / "train", b"x").parent, s), "cifar-100-python"),
    _case("corrupted CIFAR pickle", "teacher",
          lambda t, r, s, c: _teacher_args(_corrupt_cifar(t, r), s), "cifar"),
    _case("ImageNet folder without images", "teacher",
          lambda t, r, s, c: ["--model", "ResNet18", "--dataset", "imagenet", "--data_root", str(_empty_imagenet(t)),
                              "--save_dir", str(s), *FAST], "image"),
    _case("bad lr_decay_epochs", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--lr_decay_epochs", "150,x"],
          "--lr_decay_epochs"),
    _case("decreasing lr_decay_epochs", "teacher",
          lambda t, r, s, c: [*_teacher_args(r, s), "--lr_decay_epochs", "180,150"], "--lr_decay_epochs"),
    _case("zero batch size", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--batch_size", "0"], "--batch_size"),
    _case("zero epochs", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--epochs", "0"], "--epochs"),
    _case("negative learning rate", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--learning_rate", "-1"],
          "--learning_rate"),
    _case("non-numeric flag", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--epochs", "ten"], "--epochs"),
    _case("bad val_split", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--val_split", "1.5"], "--val_split"),
    _case("fp16 on CPU", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--amp", "fp16", "--device", "cpu"],
          "fp16"),
    _case("dali on CIFAR", "teacher", lambda t, r, s, c: [*_teacher_args(r, s), "--dali", "cpu"], "--dali"),
    _case("unwritable save_dir", "teacher",
          lambda t, r, s, c: _teacher_args(r, _write(t / "a_file", b"x") / "save"), "--save_dir"),
    _case("teacher file missing", "student", lambda t, r, s, c: _student_args(r, s, t / "none.pth"), "does not exist"),
    _case("truncated teacher", "student",
          lambda t, r, s, c: _student_args(r, s, _write(t / "resnet8_x" / "t.pth", c.read_bytes()[:1000])),
          "cannot read"),
    _case("teacher is not a checkpoint", "student",
          lambda t, r, s, c: _student_args(r, s, _write(t / "resnet8_x" / "t.pth", b"hello")), "cannot read"),
    _case("teacher needs unpickling", "student",
          lambda t, r, s, c: _student_args(r, s, _pickle_payload(t)), "refusing"),
    _case("teacher architecture not inferable", "student",
          lambda t, r, s, c: _student_args(r, s, _anonymous_teacher(t)), "--model_t"),
    _case("teacher of another class count", "student",
          lambda t, r, s, c: _student_args(r, s, _rd_teacher(t / "resnet8_vanilla", num_classes=10)), "classes"),
    _case("teacher of another architecture", "student",
          lambda t, r, s, c: _student_args(r, s, _rd_teacher(t / "resnet14_vanilla", arch="resnet8")), "resnet14"),
    _case("--model_t contradicts the checkpoint", "student",
          lambda t, r, s, c: _student_args(r, s, c, "--model_t", "resnet14"), "contradicts"),
    _case("nce_k not positive", "student",
          lambda t, r, s, c: _student_args(r, s, c, "--distill", "crd", "--nce_k", "0"), "--nce_k"),
    _case("feat_dim not positive", "student",
          lambda t, r, s, c: _student_args(r, s, c, "--distill", "crd", "--feat_dim", "-3"), "--feat_dim"),
    _case("features that cannot be paired", "student",
          lambda t, r, s, c: _student_args(r, s, c, "--distill", "fsp", "--model_s", "resnet8x4"), "fsp"),
]


def _corrupt_cifar(tmp: Path, root: Path) -> Path:
    target = tmp / "corrupt" / "cifar-100-python"
    target.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (target / name).write_bytes((root / "cifar-100-python" / name).read_bytes()[:300])
    return target.parent


def _empty_imagenet(tmp: Path) -> Path:
    for split in ("train", "val"):
        (tmp / "inet" / split / "n0001").mkdir(parents=True)
    return tmp / "inet"


def _pickle_payload(tmp: Path) -> Path:
    path = tmp / "resnet8_vanilla" / "evil.pth"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:
        pickle.dump({"model": {}, "payload": Payload()}, handle)
    return path


def _anonymous_teacher(tmp: Path) -> Path:
    path = tmp / "mystery" / "weights.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict()}, path)
    return path


@pytest.mark.parametrize(("kind", "args_fn", "message"), CASES)
def test_user_mistake_gives_one_line_and_exit_2(kind, args_fn, message, tmp_path, cifar100_root, cifar100_teacher,
                                                 capsys):
    save = tmp_path / "save"
    args = args_fn(tmp_path, cifar100_root, save, cifar100_teacher)
    capsys.readouterr()
    status, err = run_main(kind, args, capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert not (save / "teachers").exists() and not (save / "students").exists()


def test_resume_pointing_at_another_runs_checkpoint(tmp_path, cifar100_root, cifar100_teacher, capsys):
    args = [*_teacher_args(cifar100_root, tmp_path), "--model", "resnet14", "--resume", str(cifar100_teacher)]
    status, err = run_main("teacher", args, capsys)
    assert status == 2 and "belongs to run" in err


def test_the_real_script_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train_teacher.py"), "--model", "nope"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown model" in result.stderr and "Traceback" not in result.stderr
