"""Faults: SIGKILL and SIGTERM at any moment, a NaN loss, a failed checkpoint write, two runs at once.

A killed run resumed with ``--resume auto`` must end bit-identical to one that never stopped
(deterministic mode, CPU): weights, method state (memory banks, queues), optimiser state and
every logged metric except wall-clock timings. Nothing a run saved is overwritten by another
run, and a full disk is a one-line exit 4 that keeps the last good checkpoint.
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
from errors import UsageError
from helper.run_folder import LOCK_NAME, check_writable, claim_run_folder
from tests.conftest import run_main
from tests.runfolders import TIMING_KEYS, assert_same_training

REPO = Path(__file__).resolve().parents[1]


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
    assert_same_training(_last_checkpoint(straight_save), _last_checkpoint(killed_save))
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
    assert_same_training(_last_checkpoint(straight_save), _last_checkpoint(stopped_save))


def test_a_second_signal_exits_at_once():
    from helper.distributed import ProcessInfo
    from helper.signals import StopFlag

    flag = StopFlag(ProcessInfo(), torch.device("cpu"), agree_every=1)
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
    from distiller_zoo.task import Supervised

    args = ["--model", "resnet8", "--data_root", str(small_cifar), "--save_dir", str(tmp_path), "--epochs", "1",
            "--batch_size", "32", "--num_workers", "0"]
    assert run_main("teacher", args)[0] == 0
    (latest,) = tmp_path.glob("teachers/models/*/latest.pth")
    before = latest.read_bytes()

    original, calls = Supervised.forward, {"n": 0}

    def poisoned(self, batch):
        prediction, terms = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["cls"] = terms["cls"] * float("nan")
        return prediction, terms

    monkeypatch.setattr(Supervised, "forward", poisoned)
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
    assert_same_training(_last_checkpoint(straight), _last_checkpoint(resumed))


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
    assert_same_training(_last_checkpoint(straight_save), _last_checkpoint(stopped_save))


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
    for save, epochs in ((straight, "2"), (resumed, "1")):
        result = torchrun(save, epochs)
        assert result.returncode == 0, result.stderr
    result = torchrun(resumed, "2", "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert_same_training(_last_checkpoint(straight), _last_checkpoint(resumed))


# --- a full disk during a run --------------------------------------------------------------------


def _limit_file_size() -> None:
    """In the child: files may not grow past 64 KiB, as on a full disk or quota (EFBIG, not SIGXFSZ)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_a_full_disk_during_a_run_exits_4_naming_the_checkpoint(tmp_path, small_cifar):
    command = [*_command("teacher", small_cifar, tmp_path, ["--model", "resnet8"]), "--epochs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size)
    assert result.returncode == 4, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "could not write checkpoint" in line and "File too large" in line
    assert "resnet8_best.pth" in line  # the first checkpoint of the run
    (run_dir,) = tmp_path.glob("teachers/models/*")
    assert not list(run_dir.glob("*.pth")) and not list(run_dir.glob(".*.tmp"))


# --- lost work: a folder that holds a run, two runs in one folder ------------------------------------


def _fill(run_dir: Path) -> dict[str, bytes]:
    """A run folder as a finished run leaves it; its files by name."""
    run_dir.mkdir(parents=True)
    files = {"summary.json": b'{"finished": true}', "metrics.jsonl": b'{"epoch": 1}\n', "latest.pth": b"weights"}
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    return files


def _contents(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run_dir.iterdir()}


@pytest.mark.parametrize("saved", ["summary.json", "metrics.jsonl", "latest.pth", "resnet8_best.pth"])
def test_a_folder_holding_any_saved_file_is_not_claimed_without_resume(tmp_path, saved):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / saved).write_bytes(b"saved")
    with pytest.raises(UsageError) as error:
        claim_run_folder(run_dir, resuming=False)
    assert str(error.value) == (f"{run_dir} already holds a run ({saved}); continue it with --resume auto, "
                                "or start a new one with another --trial")
    assert _contents(run_dir) == {saved: b"saved"}


def test_a_finished_run_is_claimed_to_resume_and_left_whole(tmp_path):
    run_dir = tmp_path / "run"
    files = _fill(run_dir)
    with claim_run_folder(run_dir, resuming=True) as lock:
        assert (run_dir / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        assert lock.path == run_dir / LOCK_NAME
    assert _contents(run_dir) == files


def test_an_empty_metrics_file_of_a_run_killed_at_once_holds_nothing_to_lose(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes(b"")
    with claim_run_folder(run_dir, resuming=False):
        pass


def test_a_second_claim_names_the_first_ones_pid_and_waits_for_nothing(tmp_path):
    run_dir = tmp_path / "save" / "teachers" / "models" / "run"
    with claim_run_folder(run_dir, resuming=False):
        before = _contents(run_dir)
        for resuming in (False, True):
            with pytest.raises(UsageError) as error:
                claim_run_folder(run_dir, resuming=resuming)
            assert str(error.value) == (f"{run_dir} is in use by another run (pid {os.getpid()} on "
                                        f"{os.uname().nodename}); wait for it to end, or start this one with "
                                        "another --trial")
        assert _contents(run_dir) == before
    with claim_run_folder(run_dir, resuming=False):  # released: the next run may start
        pass


def test_a_claim_that_wrote_nothing_leaves_no_folder_behind(tmp_path):
    with claim_run_folder(tmp_path / "save" / "teachers" / "models" / "run", resuming=False):
        assert (tmp_path / "save" / "teachers" / "models" / "run" / LOCK_NAME).is_file()
    assert list(tmp_path.iterdir()) == []


def test_a_claimed_folder_keeps_what_the_run_wrote_and_drops_the_lock(tmp_path):
    run_dir = tmp_path / "save" / "run"
    with claim_run_folder(run_dir, resuming=False):
        (run_dir / "metrics.jsonl").write_text("{}\n")
    assert _contents(run_dir) == {"metrics.jsonl": b"{}\n"}


CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from helper.run_folder import claim_run_folder

lock = claim_run_folder(Path(sys.argv[1]), resuming=False)
print("claimed", flush=True)
time.sleep(600)
"""


def test_the_lock_of_a_killed_run_blocks_only_while_it_lives(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {holder.pid} "):
            claim_run_folder(run_dir, resuming=False)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # left behind by SIGKILL
    with claim_run_folder(run_dir, resuming=False):
        assert (run_dir / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_a_file_below_the_save_folder_is_found_before_writing(tmp_path):
    (tmp_path / "save").mkdir()
    (tmp_path / "save" / "students").write_text("not a folder")
    with pytest.raises(UsageError) as error:
        check_writable(tmp_path / "save" / "students" / "models" / "run")
    assert str(error.value) == (f"cannot write {tmp_path}/save/students/models/run: {tmp_path}/save/students is not "
                                "a writable folder; pick a --save_dir you can write to")
    check_writable(tmp_path / "save" / "teachers" / "models" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_below_the_save_folder_is_found_before_writing(tmp_path):
    (tmp_path / "save" / "students").mkdir(parents=True)
    (tmp_path / "save" / "students").chmod(0o555)
    try:
        with pytest.raises(UsageError, match="save/students is not a writable folder"):
            check_writable(tmp_path / "save" / "students" / "tensorboard" / "run")
    finally:
        (tmp_path / "save" / "students").chmod(0o755)
