"""Faults: SIGKILL and SIGTERM at any moment, a NaN loss, a failed checkpoint write.

A killed run resumed with ``--resume auto`` must end bit-identical to one that never stopped
(deterministic mode, CPU): weights, method state (memory banks, queues), optimiser state and
every logged metric except wall-clock timings.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distiller_zoo
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"images_per_second"}


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    from tests.fakedata import write_cifar100

    return write_cifar100(tmp_path_factory.mktemp("faults_data"), n_train=128, n_test=32)


def _command(kind: str, data: Path, save: Path, extra: list[str]) -> list[str]:
    script = REPO / ("train_teacher.py" if kind == "teacher" else "train_student.py")
    return [sys.executable, str(script), "--data_root", str(data), "--save_dir", str(save), "--epochs", "2",
            "--batch_size", "32", "--num_workers", "0", "--deterministic", "--lr_decay_epochs", "1", *extra]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _last_checkpoint(save: Path) -> dict:
    (path,) = save.glob("*/models/*/*_last.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_identical(a: dict, b: dict) -> None:
    for part in ("model", "distiller"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    for slot_a, slot_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in slot_a:
            torch.testing.assert_close(slot_a[key], slot_b[key], rtol=0, atol=0)
    strip = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in a["history"]]
    assert strip == [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in b["history"]]
    assert (a["epoch"], a["best_epoch"]) == (b["epoch"], b["best_epoch"])


def _metrics(save: Path) -> list[dict]:
    (path,) = save.glob("*/models/*/metrics.jsonl")
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines()]


def _kill_then_resume(command: list[str], delay: float, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """Start a run, send ``sig`` once training has been going for ``delay`` seconds, then resume it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # training starts once the run folder is announced
        if line.startswith("run folder:"):
            break
    time.sleep(delay)
    process.send_signal(sig)
    process.communicate(timeout=600)
    resumed = _run([*command, "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    return resumed


CASES = [
    pytest.param("teacher", ["--model", "resnet8"], 0, id="teacher-seed0"),
    pytest.param("teacher", ["--model", "resnet8"], 1, id="teacher-seed1"),
    pytest.param("student", ["--distill", "kd"], 0, id="kd-seed0"),
    pytest.param("student", ["--distill", "kd"], 1, id="kd-seed1"),
    pytest.param("student", ["--distill", "crd", "--nce_k", "32"], 2, id="crd"),
    pytest.param("student", ["--distill", "rrd", "--nce_k", "32"], 3, id="rrd"),
    pytest.param("student", ["--distill", "fsp", "--init_epochs", "1"], 4, id="fsp-two-stage"),
]


@pytest.mark.parametrize(("kind", "extra", "seed"), CASES)
def test_sigkill_at_a_random_moment_then_resume_is_exact(kind, extra, seed, tmp_path, small_cifar, cifar100_teacher):
    if kind == "student":
        extra = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", *extra]
    straight_save = tmp_path / "straight"
    started = time.perf_counter()
    straight = _run(_command(kind, small_cifar, straight_save, extra))
    assert straight.returncode == 0, straight.stderr
    duration = time.perf_counter() - started

    killed_save = tmp_path / "killed"
    _kill_then_resume(_command(kind, small_cifar, killed_save, extra), random.Random(seed).uniform(0, 0.8 * duration))
    _assert_identical(_last_checkpoint(straight_save), _last_checkpoint(killed_save))
    assert _metrics(straight_save) == _metrics(killed_save)


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path, small_cifar, cifar100_teacher):
    extra = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "crd", "--nce_k", "32",
             "--print_freq", "1"]
    straight_save, stopped_save = tmp_path / "straight", tmp_path / "stopped"
    assert _run(_command("student", small_cifar, straight_save, extra)).returncode == 0

    command = _command("student", small_cifar, stopped_save, extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("train epoch 1 [1/"):  # stop in the middle of the first epoch
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 143
    assert "interrupted" in err and "--resume auto" in err and "Traceback" not in err
    (latest,) = stopped_save.glob("students/models/*/latest.pth")
    partial = torch.load(latest, map_location="cpu", weights_only=True)["partial"]
    assert partial is not None and partial["iteration"] >= 1

    resumed = _run([*command, "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_identical(_last_checkpoint(straight_save), _last_checkpoint(stopped_save))


def test_a_second_signal_exits_at_once():
    from helper.distributed import ProcessInfo
    from helper.driver import _StopFlag

    flag = _StopFlag(ProcessInfo(), torch.device("cpu"), agree_every=1)
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag()
        with pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGTERM)
        assert exit_info.value.code == 128 + signal.SIGTERM
    finally:
        flag.uninstall()


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, small_cifar, capsys, monkeypatch):
    from distiller_zoo.base import Distiller

    args = ["--model", "resnet8", "--data_root", str(small_cifar), "--save_dir", str(tmp_path), "--epochs", "1",
            "--batch_size", "32", "--num_workers", "0"]
    assert run_main("teacher", args)[0] == 0
    (latest,) = tmp_path.glob("teachers/models/*/latest.pth")
    before = latest.read_bytes()

    original, calls = Distiller.forward, {"n": 0}

    def poisoned(self, batch):
        prediction, terms = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["cls"] = terms["cls"] * float("nan")
        return prediction, terms

    monkeypatch.setattr(Distiller, "forward", poisoned)
    capsys.readouterr()
    status, err = run_main("teacher", [*args[:-4], "--epochs", "2", "--resume", "auto", *args[-4:]], capsys)
    assert status == 3
    assert err.strip() == ("error: loss term 'cls' became non-finite at epoch 2, iteration 3; "
                           "stopped, the last good checkpoint is kept")
    assert latest.read_bytes() == before


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from helper import checkpoint

    path = tmp_path / "latest.pth"
    checkpoint.save_atomic({"epoch": 1}, path)

    def disk_full(state, handle):
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write checkpoint .*latest\.pth: No space left"):
        checkpoint.save_atomic({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_interrupted_between_temp_file_and_rename(tmp_path, monkeypatch):
    from helper import checkpoint

    path = tmp_path / "latest.pth"
    checkpoint.save_atomic({"epoch": 1}, path)

    def crash(src, dst):
        raise KeyboardInterrupt  # e.g. the process is stopped right before the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_failed_write_during_a_run_exits_4_naming_the_file(tmp_path, small_cifar, capsys, monkeypatch):
    from helper import checkpoint

    original = checkpoint.save_atomic

    def failing(state, path):
        if Path(path).name.endswith("_best.pth"):
            raise OSError(errno.EACCES, f"could not write checkpoint {path}: Permission denied")
        original(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", failing)
    args = ["--model", "resnet8", "--data_root", str(small_cifar), "--save_dir", str(tmp_path), "--epochs", "1",
            "--batch_size", "32", "--num_workers", "0"]
    status, err = run_main("teacher", args, capsys)
    assert status == 4
    assert "resnet8_best.pth" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", sorted(distiller_zoo.DISTILLERS))
def test_every_method_resumes_exactly_at_an_epoch_boundary(method, tmp_path, small_cifar, cifar100_teacher):
    """Method state (banks, queues, projectors, the init stage) survives a stop between epochs."""
    common = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", method, "--data_root",
              str(small_cifar), "--batch_size", "32", "--num_workers", "0", "--deterministic",
              "--lr_decay_epochs", "1", "--nce_k", "32", "--init_epochs", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_main("student", [*common, "--epochs", "2", "--save_dir", str(straight)])[0] == 0
    assert run_main("student", [*common, "--epochs", "1", "--save_dir", str(resumed)])[0] == 0
    assert run_main("student", [*common, "--epochs", "2", "--save_dir", str(resumed), "--resume", "auto"])[0] == 0
    _assert_identical(_last_checkpoint(straight), _last_checkpoint(resumed))


def test_sigterm_in_the_init_stage_of_a_two_stage_method_resumes_exactly(tmp_path, small_cifar, cifar100_teacher):
    extra = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "fsp", "--init_epochs", "2",
             "--print_freq", "1"]
    straight_save, stopped_save = tmp_path / "straight", tmp_path / "stopped"
    assert _run(_command("student", small_cifar, straight_save, extra)).returncode == 0

    command = _command("student", small_cifar, stopped_save, extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("init epoch 2 [1/"):
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 143 and "init epoch 2" in err
    resumed = _run([*command, "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_identical(_last_checkpoint(straight_save), _last_checkpoint(stopped_save))


def test_torchrun_run_resumes_exactly(tmp_path, small_cifar, cifar100_teacher):
    """Two gloo processes: stopping between epochs and resuming gives the same weights and banks."""
    def torchrun(save: Path, epochs: str, *extra: str) -> subprocess.CompletedProcess:
        script = REPO / "train_student.py"
        args = ["--path_t", str(cifar100_teacher), "--model_s", "resnet8", "--distill", "crd", "--nce_k", "32",
                "--data_root", str(small_cifar), "--save_dir", str(save), "--epochs", epochs, "--batch_size", "16",
                "--num_workers", "0", "--deterministic", "--lr_decay_epochs", "1", *extra]
        return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(script), *args])

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert torchrun(straight, "2").returncode == 0
    assert torchrun(resumed, "1").returncode == 0
    result = torchrun(resumed, "2", "--resume", "auto")
    assert result.returncode == 0, result.stderr
    _assert_identical(_last_checkpoint(straight), _last_checkpoint(resumed))
