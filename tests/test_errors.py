"""The error contract: a user mistake exits 2 with one line on stderr, no traceback, nothing written or lost.

Each case runs an entry script in-process on a save folder it may first fill (a finished run, a
file where a folder should be) and then checks that the folder is byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helper.run_folder import claim_run_folder
from models import model_dict
from tests.conftest import run_main
from tests.fakedata import write_cifar10

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--num_workers", "0", "--batch_size", "32"]
TEACHER_RUN = "resnet8_vanilla_cifar100_trial_0"  # the folder of the conftest teacher run and of _teacher_args
CRD = ["--distill", "crd", "--nce_k", "16"]


class Payload:
    """An arbitrary object: a file holding it needs full unpickling, which weights_only refuses."""


def _teacher_file(path: Path, record: dict | None = None, network: str = "resnet8", classes: int = 100,
                  weights_key: str = "model") -> Path:
    """A checkpoint holding a fresh ``network`` under ``weights_key``, beside what ``record`` adds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({weights_key: model_dict[network](num_classes=classes).state_dict(), **(record or {})}, path)
    return path


def _rd_teacher(folder: Path, arch: str = "resnet8", num_classes: int = 100) -> Path:
    """A teacher file as RepDistiller writes it: ``<arch>_vanilla/ckpt_epoch_240.pth`` = {'model': ...}."""
    return _teacher_file(folder / "ckpt_epoch_240.pth", {"epoch": 240}, arch, num_classes)


def _digits_teacher(tmp: Path) -> Path:
    """A teacher of ours trained on the 10-class digits set: CIFAR-10 has as many classes, other images."""
    name = "resnet8_vanilla_digits_trial_0"
    record = {"arch": "resnet8", "num_classes": 10, "dataset": "digits", "run_name": name}
    return _teacher_file(tmp / name / "resnet8_best.pth", record, classes=10)


def _simkd_student(tmp: Path) -> Path:
    """A SimKD student of ours: the student network, and the projector and teacher classifier in its method state."""
    name = "S:resnet8_T:resnet20_cifar100_simkd_r:0.0_a:0.0_b:1.0_0"
    record = {"distiller": {"simkd.transfer.0.weight": torch.zeros(8)}, "arch": "resnet8", "num_classes": 100,
              "dataset": "cifar100", "method": "simkd", "run_name": name}
    return _teacher_file(tmp / name / "resnet8_best.pth", record)


def _upstream_simkd_student(tmp: Path) -> Path:
    """A student file as SimKD's own train_student.py writes it: the projector under 'proj'."""
    record = {"epoch": 240, "best_acc": 70.0, "proj": {"transfer.0.weight": torch.zeros(8)}}
    return _teacher_file(tmp / "S:resnet8_T:resnet32x4_cifar100_simkd_r:0.0_a:0.0_b:1.0_0" / "resnet8_best.pth", record)


def _finished_teacher(save: Path, teacher: Path) -> Path:
    """``save`` holding a copy of the conftest teacher run, finished, as ``_teacher_args`` would have run it."""
    shutil.copytree(teacher.parents[3], save)
    return save


def _read_only(folder: Path) -> Path:
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    return folder


def _case(name, kind, args_fn, message, marks=()):
    return pytest.param(kind, args_fn, message, id=name, marks=marks)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Everything below ``folder``: each file's bytes and each folder (None), by relative path."""
    if not folder.exists():
        return {}
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def _assert_one_line(status: int, err: str, message: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err


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
    _case("--path_t names a folder", "student", lambda t, r, s, c: _student_args(r, s, c.parent),
          "is a folder, not a file; it holds latest.pth, resnet8_best.pth"),
    _case("teacher in an unknown layout", "student",
          lambda t, r, s, c: _student_args(r, s, _teacher_file(t / "resnet8_x" / "t.pth", weights_key="weights")),
          "{'state_dict': state_dict} (timm, Lightning)"),
    _case("teacher trained on another data set", "student",
          lambda t, r, s, c: _student_args(write_cifar10(t / "c10", n_train=20, n_test=10), s, _digits_teacher(t),
                                           "--dataset", "cifar10"), "was trained on digits"),
    _case("SimKD student as the teacher", "student", lambda t, r, s, c: _student_args(r, s, _simkd_student(t)),
          "is a simkd student checkpoint"),
    _case("SimKD's own student file as the teacher", "student",
          lambda t, r, s, c: _student_args(r, s, _upstream_simkd_student(t)), "is a simkd student checkpoint"),
    _case("a file where a folder below --save_dir goes", "teacher",
          lambda t, r, s, c: _teacher_args(r, _write(s / "teachers", b"x").parent),
          "teachers is not a writable folder"),
    _case("a read-only folder below --save_dir", "teacher",
          lambda t, r, s, c: _teacher_args(r, _read_only(s / "teachers" / "models").parents[1]),
          "models is not a writable folder",
          marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")),
    _case("re-run of a finished run without --resume", "teacher",
          lambda t, r, s, c: _teacher_args(r, _finished_teacher(s, c)), "already holds a run"),
    _case("resume with another learning rate", "teacher",
          lambda t, r, s, c: [*_teacher_args(r, _finished_teacher(s, c)), "--resume", "auto", "--learning_rate", "0.1"],
          "would change the run: --learning_rate 0.05 → 0.1;"),
    _case("resume with another batch size", "teacher",
          lambda t, r, s, c: [*_teacher_args(r, _finished_teacher(s, c)), "--resume", "auto", "--batch_size", "64"],
          "--batch_size 32 → 64"),
    _case("resume for more epochs with another seed", "teacher",
          lambda t, r, s, c: [*_teacher_args(r, _finished_teacher(s, c)), "--resume", "auto", "--epochs", "3",
                              "--seed", "1"], "would change the run: --seed 0 → 1;"),
    _case("resume with several other flags", "teacher",
          lambda t, r, s, c: [*_teacher_args(r, _finished_teacher(s, c)), "--resume", str(c.parent / "latest.pth"),
                              "--weight_decay", "0.001", "--momentum", "0.5"],
          "--momentum 0.9 → 0.5, --weight_decay 0.0005 → 0.001"),
    *[_case(f"{flag} {value}", kind, lambda t, r, s, c, kind=kind, flag=flag, value=value: [
        *(_teacher_args(r, s) if kind == "teacher" else _student_args(r, s, c)), flag, value], message)
      for kind, flag, value, message in [
          ("teacher", "--learning_rate", "nan", "expected a finite number, got 'nan'"),
          ("teacher", "--weight_decay", "nan", "expected a finite number"),
          ("teacher", "--lr_decay_rate", "inf", "expected a finite number, got 'inf'"),
          ("teacher", "--momentum", "inf", "expected a finite number"),
          ("student", "-b", "nan", "expected a finite number"),
          ("student", "--kd_T", "nan", "expected a finite number"),
          ("student", "-b", "-1", "must not be negative, got '-1'"),
          ("student", "-r", "-0.5", "must not be negative"),
          ("student", "--nce_t", "-0.07", "must not be negative"),
          ("student", "--kd_T", "0", "--kd_T must be positive"),
      ]],
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
    return _teacher_file(tmp / "mystery" / "weights.pth")


@pytest.mark.parametrize(("kind", "args_fn", "message"), CASES)
def test_user_mistake_gives_one_line_and_exit_2(kind, args_fn, message, tmp_path, cifar100_root, cifar100_teacher,
                                                 capsys):
    save = tmp_path / "save"
    args = args_fn(tmp_path, cifar100_root, save, cifar100_teacher)
    before = _snapshot(save)
    capsys.readouterr()
    status, err = run_main(kind, args, capsys)
    _assert_one_line(status, err, message)
    assert _snapshot(save) == before


@pytest.mark.parametrize("resuming", [False, True], ids=["fresh folder", "resumed run"])
def test_a_run_in_a_folder_another_run_holds_names_its_pid(resuming, tmp_path, cifar100_root, cifar100_teacher,
                                                           capsys):
    """Two copies of a command started together: the second leaves the first's folder alone."""
    save = tmp_path / "save"
    args = _teacher_args(cifar100_root, save)
    if resuming:
        _finished_teacher(save, cifar100_teacher)
        args += ["--resume", "auto", "--epochs", "2"]
    with claim_run_folder(save / "teachers" / "models" / TEACHER_RUN, resuming=resuming):
        before = _snapshot(save)
        capsys.readouterr()
        status, err = run_main("teacher", args, capsys)
        after = _snapshot(save)
    _assert_one_line(status, err, f"is in use by another run (pid {os.getpid()} on ")
    assert after == before


@pytest.fixture(scope="module")
def crd_student(cifar100_root, cifar100_teacher, tmp_path_factory) -> Path:
    """The save folder of a finished 1-epoch CRD student run of ``_student_args(..., *CRD)``."""
    save = tmp_path_factory.mktemp("crd_student")
    assert run_main("student", _student_args(cifar100_root, save, cifar100_teacher, *CRD))[0] == 0
    return save


def test_resume_with_another_method_flag_exits_2_and_keeps_the_run(crd_student, tmp_path, cifar100_root,
                                                                    cifar100_teacher, capsys):
    save = shutil.copytree(crd_student, tmp_path / "save")
    before = _snapshot(save)
    args = _student_args(cifar100_root, save, cifar100_teacher, *CRD, "--resume", "auto", "--feat_dim", "64")
    capsys.readouterr()
    status, err = run_main("student", args, capsys)
    _assert_one_line(status, err, "would change the run: --feat_dim 128 → 64;")
    assert _snapshot(save) == before


def test_resume_may_train_longer_elsewhere_and_keeps_what_was_saved(tmp_path, cifar100_root, cifar100_teacher):
    """The control: where the data is, how often to save and log, and how long to train may change."""
    save = _finished_teacher(tmp_path / "save", cifar100_teacher)
    run_dir = save / "teachers" / "models" / TEACHER_RUN
    first_epoch = (run_dir / "metrics.jsonl").read_text().splitlines()
    data_root = shutil.copytree(cifar100_root, tmp_path / "moved_data")
    args = [*_teacher_args(data_root, save), "--resume", "auto", "--epochs", "2", "--save_freq", "1",
            "--print_freq", "3"]
    assert run_main("teacher", args)[0] == 0
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:1] == first_epoch
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert (run_dir / "ckpt_epoch_2.pth").is_file()


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
