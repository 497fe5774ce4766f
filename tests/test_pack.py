"""Packed runs: each member of a pack is its solo run, bit for bit, and a pack resumes and fails like runs do."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataset.batch import DataNeeds
from errors import UsageError
from helper.pack import union_needs
from helper.pack_args import member_argvs
from tests.conftest import run_main
from tests.runfolders import TIMING_KEYS, assert_same_training

REPO = Path(__file__).resolve().parents[1]
# Methods that ask the loader for different things: nothing (kd), indices and contrastive
# negatives (crd), a queue (rrd), full batches only (semckd: 100 images in batches of 32 leave a
# partial last batch that the others train on and it skips), and a pre-training stage that
# trains alone before the main stages train together (fsp).
PACK = "kd,crd,rrd,semckd,fsp"


@pytest.fixture(scope="module")
def pack_data(tmp_path_factory) -> Path:
    from tests.fakedata import write_cifar100

    return write_cifar100(tmp_path_factory.mktemp("pack_data"), n_train=100, n_test=20)


def _args(data: Path, teacher: Path, save: Path, distill: str, *extra: str, epochs: int = 1) -> list[str]:
    return ["--path_t", str(teacher), "--model_s", "resnet8", "--distill", distill, "--nce_k", "32",
            "--init_epochs", "1", "--data_root", str(data), "--save_dir", str(save), "--epochs", str(epochs),
            "--lr_decay_epochs", "1", "--batch_size", "32", "--num_workers", "0", "--deterministic",
            "--print_freq", "1", *extra]


def _run_folders(save: Path) -> dict[str, Path]:
    return {folder.name: folder for folder in (save / "students" / "models").iterdir()}


def _last(folder: Path) -> dict:
    return torch.load(folder / "resnet8_last.pth", map_location="cpu", weights_only=True)


def _metrics(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_every_member_of_a_pack_is_bit_identical_to_its_solo_run(tmp_path, pack_data, cifar100_teacher):
    pack_save, solo_save = tmp_path / "pack", tmp_path / "solo"
    assert run_main("student", _args(pack_data, cifar100_teacher, pack_save, PACK))[0] == 0
    for method in PACK.split(","):
        assert run_main("student", _args(pack_data, cifar100_teacher, solo_save, method))[0] == 0

    packed, solo = _run_folders(pack_save), _run_folders(solo_save)
    assert sorted(packed) == sorted(solo) and len(packed) == 5
    for name, folder in packed.items():
        assert_same_training(_last(folder), _last(solo[name]))
        assert _metrics(folder) == _metrics(solo[name])
        summary, alone = (json.loads((run / "summary.json").read_text()) for run in (folder, solo[name]))
        assert summary["finished"] and {**summary["args"], "save_dir": None} == {**alone["args"], "save_dir": None}
        assert list((pack_save / "students" / "tensorboard" / name).glob("events.out.tfevents.*"))


def test_two_students_and_per_member_weights(tmp_path, pack_data, cifar100_teacher):
    """``--model_s a,b`` × ``--distill`` with one ``-a`` per member: each member's folder and weights."""
    args = _args(pack_data, cifar100_teacher, tmp_path, "kd", "-r", "1", "-a", "0.5,0.25")
    args[args.index("--model_s") + 1] = "resnet8,resnet14"
    assert run_main("student", args)[0] == 0
    names = sorted(_run_folders(tmp_path))
    assert names == ["S:resnet14_T:resnet8_cifar100_kd_r:1.0_a:0.25_b:0.0_0",
                     "S:resnet8_T:resnet8_cifar100_kd_r:1.0_a:0.5_b:0.0_0"]


def test_member_command_lines():
    members = member_argvs(["--path_t", "t.pth", "--model_s=a,b@depth=2,width=3", "--distill", "kd,crd",
                            "-r1", "--alpha", "0,1,0,1", "--epochs", "3"])
    assert members == [
        ["--path_t", "t.pth", "--epochs", "3", "--model_s", student, "--distill", method, "-r", "1", "--alpha", alpha]
        for student in ("a", "b@depth=2,width=3") for method, alpha in (("kd", "0"), ("crd", "1"))
    ]
    assert member_argvs(["--distill", "kd", "-a", "2"]) == [["--distill", "kd", "-a", "2"]]


@pytest.mark.parametrize(("extra", "message"), [
    (["--distill", "kd,crd", "-b", "1,2,3"], "-b '1,2,3' gives 3 values for 2 runs"),
    (["--distill", "kd,,crd"], "has an empty entry"),
    (["--distill", "kd,kd"], "the pack names run S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:0.9_b:0.0_0 twice"),
    (["--distill", "kd,nosuch"], "nosuch"),
])
def test_pack_mistakes_are_one_line_usage_errors(extra, message, tmp_path, pack_data, cifar100_teacher, capsys):
    args = [*_args(pack_data, cifar100_teacher, tmp_path, "kd"), *extra]
    status, err = run_main("student", args, capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "students").exists()


def test_union_of_needs():
    needs = union_needs([DataNeeds(), DataNeeds(indices=True, contrast_k=8, contrast_mode="relax"),
                         DataNeeds(drop_last=True, strong_view=True)])
    assert needs == DataNeeds(indices=True, contrast_k=8, contrast_mode="relax", drop_last=False, strong_view=True)
    assert union_needs([DataNeeds(drop_last=True), DataNeeds(drop_last=True)]).drop_last
    with pytest.raises(UsageError, match="same contrastive negatives"):
        union_needs([DataNeeds(contrast_k=8), DataNeeds(contrast_k=16)])


def test_a_member_with_a_non_finite_loss_stops_alone(tmp_path, pack_data, cifar100_teacher, capsys, monkeypatch):
    import distiller_zoo

    rrd = distiller_zoo.get("rrd")
    original = rrd.distill

    def poisoned(self, student, teacher, batch):
        terms = original(self, student, teacher, batch)
        return {name: value * float("nan") for name, value in terms.items()} if self.epoch == 2 else terms

    monkeypatch.setattr(rrd, "distill", poisoned)
    status, err = run_main("student", _args(pack_data, cifar100_teacher, tmp_path, "kd,crd,rrd", epochs=2), capsys)
    assert status == 3
    assert "rrd" in err and "became non-finite at epoch 2, iteration 1" in err and "Traceback" not in err
    for name, folder in _run_folders(tmp_path).items():
        summary = json.loads((folder / "summary.json").read_text())
        if "_rrd_" in name:
            assert not summary["finished"] and "non-finite at epoch 2" in summary["stopped"]
            latest = torch.load(folder / "latest.pth", map_location="cpu", weights_only=True)
            assert latest["epoch"] == 1  # the last good checkpoint
        else:
            assert summary["finished"] and summary["epochs"] == 2 and "stopped" not in summary


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_pack(tmp_path, pack_data, cifar100_teacher):
    def command(save: Path) -> list[str]:
        return [sys.executable, str(REPO / "train_student.py"),
                *_args(pack_data, cifar100_teacher, save, "kd,crd,rrd", "--resume", "auto", epochs=3)]

    started = time.perf_counter()
    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    duration = time.perf_counter() - started

    killed = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in killed.stdout:
        if "train epoch 2 [2/" in line:  # the middle of the second epoch
            break
    time.sleep(random.Random(0).uniform(0, 0.1 * duration))
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    straight_runs, killed_runs = _run_folders(tmp_path / "straight"), _run_folders(tmp_path / "killed")
    assert sorted(straight_runs) == sorted(killed_runs) and len(straight_runs) == 3
    for name, folder in straight_runs.items():
        assert_same_training(_last(folder), _last(killed_runs[name]))
        assert _metrics(folder) == _metrics(killed_runs[name])


def test_sigterm_saves_every_member_mid_epoch_and_resumes_exactly(tmp_path, pack_data, cifar100_teacher):
    def command(save: Path) -> list[str]:
        return [sys.executable, str(REPO / "train_student.py"),
                *_args(pack_data, cifar100_teacher, save, "kd,crd", "--resume", "auto", epochs=2)]

    assert subprocess.run(command(tmp_path / "straight"), capture_output=True, timeout=600).returncode == 0
    stopped = subprocess.Popen(command(tmp_path / "stopped"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in stopped.stdout:
        if " train epoch 1 [1/" in line:
            break
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 143 and "--resume auto" in err
    for folder in _run_folders(tmp_path / "stopped").values():
        partial = torch.load(folder / "latest.pth", map_location="cpu", weights_only=True)["partial"]
        assert partial is not None and partial["iteration"] >= 1
    assert subprocess.run(command(tmp_path / "stopped"), capture_output=True, timeout=600).returncode == 0
    straight_runs, stopped_runs = _run_folders(tmp_path / "straight"), _run_folders(tmp_path / "stopped")
    for name, folder in straight_runs.items():
        assert_same_training(_last(folder), _last(stopped_runs[name]))


def test_a_finished_pack_has_nothing_to_do(tmp_path, pack_data, cifar100_teacher, capsys):
    args = [*_args(pack_data, cifar100_teacher, tmp_path, "kd,crd"), "--resume", "auto"]
    assert run_main("student", args)[0] == 0
    before = {name: (folder / "latest.pth").read_bytes() for name, folder in _run_folders(tmp_path).items()}
    capsys.readouterr()
    assert run_main("student", args)[0] == 0
    assert capsys.readouterr().out.count("already finished") == 2
    assert before == {name: (folder / "latest.pth").read_bytes() for name, folder in _run_folders(tmp_path).items()}
