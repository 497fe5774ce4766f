"""torchrun runs (helper/distributed.py, the driver's DDP set-up): real 2-process gloo runs on CPU.

What a torchrun run promises (CLI.md "Distributed runs"): every rank trains on its own shard,
only rank 0 logs and writes, metrics are reduced over ranks, memory banks stay identical on
every rank, and ``--batch_size`` is per process, so 2 processes × 16 train like 1 × 32.

Why "like" and not bit-exact: both runs start from the same weights (rank 0 is seeded as a
single process is, and DDP hands rank 0's parameters and buffers to every rank) and see the same
global batches (the shards are strided out of one permutation), but

* crops, flips and contrastive negatives come from per-rank random streams, so a sample is
  augmented differently than in one process;
* BatchNorm normalises each rank's 16 images with their own statistics (``--sync_bn``, which
  would use all 32, runs only on CUDA);
* the gradient all-reduce and the metric reductions add in another order.

So the teacher's accuracy (a pure evaluation) must agree exactly; the training and test losses
after one epoch within 3 % (observed: under 1 %); and the size of the student's total update
within 10 % (observed: 1 %; summed instead of averaged gradients would double it). The
direction of the update is not compared: over four steps the different crops and BatchNorm
statistics turn it by 40-55° (cosine 0.6-0.8).

Also here: the teacher side (the module's teacher is trained by torchrun), upstream's
``--multiprocessing-distributed`` flags, ``--sync_bn`` on CPU, ``--gpu_id`` (it must be in
``CUDA_VISIBLE_DEVICES`` before CUDA is first asked anything, and say when it cannot take effect),
what a usage error under torchrun shows, and the ImageNet scripts' commands.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from errors import UsageError
from helper.distributed import check_distributed_options, torchrun_command
from helper.options import parse_student_args, parse_teacher_args, teacher_parser
from tests.conftest import run_main
from tests.fakedata import write_cifar100
from tests.torchrun_probe import REPO, load_ranks, run_probe

N_TRAIN, N_TEST, BATCH = 128, 64, 16
RELATIVE_TOLERANCE = 0.03
UPDATE_TOLERANCE = 0.10
COMPARED = ("train_loss", "train_cls", "test_loss")
SMALL = ["--epochs", "1", "--num_workers", "0", "--print_freq", "1000", "--deterministic", "--device", "cpu"]


def assert_ran(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def run_folders(save: Path) -> list[Path]:
    kinds = [save / kind / "models" for kind in ("teachers", "students")]
    return sorted(folder for models in kinds if models.is_dir() for folder in models.iterdir())


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar100"), n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def teacher(cifar, tmp_path_factory) -> Path:
    """A resnet8 teacher trained by a 2-process torchrun run: the teacher side of DDP."""
    save = tmp_path_factory.mktemp("teacher")
    probe = tmp_path_factory.mktemp("teacher_probe")
    result = run_probe("teacher", ["--model", "resnet8", "--data_root", str(cifar), "--save_dir", str(save),
                                   "--batch_size", str(BATCH), *SMALL], probe, save)
    assert_ran(result)
    folder = save / "teachers" / "models" / "resnet8_vanilla_cifar100_trial_0"
    assert run_folders(save) == [folder]
    ranks = load_ranks(probe, 2)
    assert ranks[1]["writes"] == [] and ranks[0]["writes"]
    for key, value in ranks[0]["student"].items():
        assert torch.equal(value, ranks[1]["student"][key]), key
    return folder / "resnet8_best.pth"


def single_process_run(method: str, cifar: Path, teacher: Path, save: Path, probe: Path) -> tuple[dict, dict]:
    """One process with the global batch: its last metrics record and what the probe recorded."""
    result = run_probe("student", [*student_args(method, cifar, teacher, save), "--batch_size", str(2 * BATCH)],
                       probe, save, nproc=0)
    assert_ran(result)
    (folder,) = run_folders(save)
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1]), load_ranks(probe, 1)[0]


def student_update(record: dict) -> torch.Tensor:
    """The student's trained parameters after the run minus before, flattened."""
    keys = [key for key, value in record["student"].items() if value.is_floating_point() and "running" not in key]
    return torch.cat([(record["student"][key] - record["initial_student"][key]).flatten() for key in keys])


def student_args(method: str, cifar: Path, teacher: Path, save: Path) -> list[str]:
    return ["--path_t", str(teacher), "--model_s", "resnet8", "--distill", method, "--nce_k", "32",
            "--data_root", str(cifar), "--save_dir", str(save), *SMALL]


@pytest.mark.parametrize("method", ["kd", "crd"])
def test_two_processes_train_like_one_with_the_same_global_batch(method, cifar, teacher, tmp_path):
    save, probe = tmp_path / "save", tmp_path / "probe"
    # upstream's launcher flags ride along: under torchrun they are accepted and ignored
    result = run_probe("student", [*student_args(method, cifar, teacher, save), "--batch_size", str(BATCH),
                                   "--multiprocessing-distributed", "--dist-url", "tcp://127.0.0.1:23451"],
                       probe, save)
    assert_ran(result)

    # only rank 0 logs and writes: one run folder, and rank 1 opened nothing for writing
    assert result.stdout.count("teacher accuracy") == 1
    (folder,) = run_folders(save)
    ranks = load_ranks(probe, 2)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[1]["writes"] == []
    assert any(str(folder) in write for write in ranks[0]["writes"])

    # each rank trained on its own shard of BATCH-sized batches; together they cover the set once
    shards = [torch.cat([b["indices"] for b in r["batches"]]).tolist() for r in ranks]
    assert len(shards[0]) == len(shards[1]) == N_TRAIN // 2
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(N_TRAIN))
    assert all(len(b["indices"]) == BATCH for r in ranks for b in r["batches"])

    # every rank ends with the same network and the same memory banks, which rank 0 saved
    for name in ("student", "method_state"):
        assert ranks[0][name].keys() == ranks[1][name].keys()
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]), f"{name}.{key} differs between ranks"
    if method == "crd":
        assert {"criterion.contrast.memory_v1", "criterion.contrast.memory_v2"} <= ranks[0]["method_state"].keys()
    saved = torch.load(folder / "resnet8_last.pth", map_location="cpu", weights_only=True)
    for key, value in saved["model"].items():
        assert torch.equal(value, ranks[0]["student"][key]), key
    for key, value in saved["distiller"].items():
        assert torch.equal(value, ranks[0]["method_state"][key]), key

    # reduced metrics: the same as one process with the same global batch
    ddp = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    single, single_probe = single_process_run(method, cifar, teacher, tmp_path / "single", tmp_path / "single_probe")
    summary = json.loads((folder / "summary.json").read_text())
    single_summary = json.loads(next((tmp_path / "single").rglob("summary.json")).read_text())
    assert summary["teacher_acc"] == single_summary["teacher_acc"]
    for key in (*COMPARED, f"train_{method}"):
        assert math.isclose(ddp[key], single[key], rel_tol=RELATIVE_TOLERANCE), (key, ddp[key], single[key])
    for key, value in ranks[0]["initial_student"].items():
        assert torch.equal(value, single_probe["initial_student"][key]), key
    ratio = float(student_update(ranks[0]).norm() / student_update(single_probe).norm())
    assert abs(ratio - 1) < UPDATE_TOLERANCE, ratio


# --- upstream's launcher flags and --sync_bn ------------------------------------------------------


def test_upstream_launcher_outside_torchrun_names_the_torchrun_command(monkeypatch, capsys):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):  # --gpu_id sets the last
        monkeypatch.delenv(variable, raising=False)
    args = ["--model", "ResNet18", "--dataset", "imagenet", "--gpu_id", "0,1,2,3", "--batch_size", "256",
            "--num_workers", "32", "--multiprocessing-distributed", "--dist-url", "tcp://127.0.0.1:23451"]
    status, err = run_main("teacher", args, capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert err.strip().endswith("torchrun --nproc_per_node=4 train_teacher.py --model ResNet18 --dataset imagenet "
                                "--gpu_id 0,1,2,3 --batch_size 64 --num_workers 8")


def test_the_torchrun_command_keeps_every_other_flag_and_divides_the_totals():
    argv = ["--path_t", "a b/t.pth", "--dist-url=tcp://h:1", "--batch-size=100", "--multiprocessing_distributed",
            "--dist_url", "tcp://h:2", "-b", "0.8", "--num_workers", "7"]
    assert torchrun_command("train_student.py", argv, 3, 100, 7) == (
        "torchrun --nproc_per_node=3 train_student.py --path_t 'a b/t.pth' -b 0.8 --batch_size 33 --num_workers 3")
    # not given: upstream's defaults (64 images, 8 workers) were totals too
    assert torchrun_command("train_teacher.py", ["--multiprocessing-distributed"], 8, 64, 8).endswith(
        "--batch_size 8 --num_workers 1")


def test_sync_bn_on_cpu_under_torchrun_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    opt = teacher_parser().parse_args(["--sync_bn", "--device", "cpu"])
    with pytest.raises(UsageError, match="--sync_bn needs CUDA"):
        check_distributed_options(opt, [], "train_teacher.py")


# --- --gpu_id and CUDA_VISIBLE_DEVICES -----------------------------------------------------------

# Runs an entry script as ``python train_x.py ARGS`` would, with torch.cuda's queries spied on:
# prints, as JSON, the first query's name and the CUDA_VISIBLE_DEVICES it saw, and the exit status.
CUDA_SPY = """
import json, os, runpy, sys
import torch

first = {}

def spy(owner, name):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        first.setdefault("query", name)
        first.setdefault("visible", os.environ.get("CUDA_VISIBLE_DEVICES"))
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)

for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device"):
    spy(torch.cuda, name)
for name in ("_cuda_getDeviceCount", "_cuda_init"):
    if hasattr(torch._C, name):
        spy(torch._C, name)
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    first["status"] = exit.code
print(json.dumps(first))
"""
NO_SUCH_GPU = "7"  # hidden on this machine and on any with 7 GPUs or fewer


def entry_env(**changes: str) -> dict[str, str]:
    """The environment of a plain single-process run: no torchrun variables, no GPU mask of our own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **changes}


def run_entry(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=entry_env(),
                          capture_output=True, text=True, timeout=120)


def test_gpu_id_is_in_cuda_visible_devices_before_cuda_is_first_asked_anything(tmp_path):
    # --device auto asks CUDA whether it is there; the teacher file is missing, so the run stops
    # with a usage error once the driver has chosen its device
    args = ["--path_t", str(tmp_path / "missing.pth"), "--gpu_id", "3", "--device", "auto",
            "--data_root", str(tmp_path), "--save_dir", str(tmp_path / "save")]
    result = subprocess.run([sys.executable, "-c", CUDA_SPY, str(REPO / "train_student.py"), *args], cwd=tmp_path,
                            env=entry_env(), capture_output=True, text=True, timeout=120)
    first = json.loads(result.stdout.strip().splitlines()[-1])
    assert first["status"] == 2, result.stderr
    assert first["visible"] == "3", first  # not None: CUDA was asked before --gpu_id reached it
    assert "missing.pth" in result.stderr


def test_gpu_id_naming_no_visible_gpu_is_noted_and_the_run_goes_on_on_the_cpu(tmp_path, cifar100_root):
    args = ["--model", "resnet8", "--data_root", str(cifar100_root), "--epochs", "1", "--batch_size", "50",
            "--num_workers", "0", "--print_freq", "1000", "--save_dir", str(tmp_path), "--gpu_id", NO_SUCH_GPU]
    result = run_entry("train_teacher.py", args, tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: --gpu_id")]
    assert notes == [f"note: --gpu_id {NO_SUCH_GPU} is ignored: no CUDA device is visible with "
                     f"CUDA_VISIBLE_DEVICES={NO_SUCH_GPU} (no GPU of that number, or no GPU); running on the CPU"]
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["finished"] and summary["epochs"] == 1


def test_gpu_id_naming_no_visible_gpu_with_device_cuda_is_a_usage_error(tmp_path):
    result = run_entry("train_teacher.py", ["--device", "cuda", "--gpu_id", NO_SUCH_GPU], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --device cuda --gpu_id {NO_SUCH_GPU}: no CUDA device is visible with CUDA_VISIBLE_DEVICES="
        f"{NO_SUCH_GPU} (no GPU of that number, or no GPU); give a GPU number that nvidia-smi lists, "
        "or use --device cpu"]
    assert not (tmp_path / "save").exists()


def test_gpu_id_with_device_cpu_is_noted(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored afterwards: this run sets it
    status, err = run_main("teacher", ["--device", "cpu", "--gpu_id", "0", "--data_root", str(tmp_path / "none"),
                                       "--save_dir", str(tmp_path / "save")], capsys)
    assert status == 2  # no data there; the note comes first
    assert err.splitlines()[0] == "note: --gpu_id 0 is ignored with --device cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


# --- usage errors under torchrun ------------------------------------------------------------------


def test_a_usage_error_under_torchrun_is_printed_once_by_rank_0(tmp_path):
    """Both ranks find the mistake; the user sees its line once, then torchrun's own summary
    (the launcher's ChildFailedError traceback, naming exit code 2) and torchrun's exit status 1."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "train_teacher.py"), "--device", "cpu", "--epochs", "0"]
    result = subprocess.run(command, cwd=tmp_path, env=entry_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines.count("error: --epochs must be positive, got 0") == 1
    assert not [line for line in lines if line.startswith("error") and "--epochs" not in line]
    assert "(rank 1)" not in result.stderr
    assert "ChildFailedError" in result.stderr and "exitcode  : 2" in result.stderr


def test_a_usage_error_on_another_rank_waits_for_rank_0_then_names_the_rank(monkeypatch, capsys):
    import helper.cli

    waited = []
    monkeypatch.setattr(helper.cli.time, "sleep", waited.append)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, err = run_main("teacher", ["--device", "cpu", "--epochs", "0"], capsys)
    assert status == 2
    assert waited == [helper.cli.RANK_REPORT_GRACE_S] and waited[0] >= 5
    assert err.strip() == "error: (rank 1) --epochs must be positive, got 0"


# --- the ImageNet scripts -------------------------------------------------------------------------


def dry_run(script: str, **env: str) -> list[list[str]]:
    """The commands ``scripts/<script>`` prints with DRY_RUN=1, split into words."""
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], env={**os.environ, "DRY_RUN": "1", **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_imagenet_scripts_run_the_recipe_under_torchrun(tmp_path):
    teachers = dry_run("run_imagenet_teacher.sh", NPROC="4", SAVE_DIR=str(tmp_path))
    students = dry_run("run_imagenet_distill.sh", NPROC="4", SAVE_DIR=str(tmp_path), METHODS="kd,crd")
    assert len(teachers) == 2 and len(students) == 4
    for words in teachers + students:
        assert words[:3] == ["torchrun", "--nproc_per_node=4", "--standalone"]
        script, args = Path(words[3]).name, words[4:]
        opt = (parse_teacher_args if script == "train_teacher.py" else parse_student_args)(args)
        recipe = (opt.dataset, opt.dali, opt.batch_size, opt.epochs, opt.learning_rate, opt.lr_decay_epochs,
                  opt.weight_decay, opt.momentum)
        assert recipe == ("imagenet", "gpu", 256 // 4, 120, 0.1, [30, 60, 90], 1e-4, 0.9)
    assert [parse_teacher_args(w[4:]).model for w in teachers] == ["ResNet34", "ResNet50_Imagenet"]
    pairs = [(opt.path_t, opt.model_s) for opt in (parse_student_args(w[4:]) for w in students)]
    assert [student for _, student in pairs] == ["ResNet18"] * 2 + ["MobileNetV2_Imagenet"] * 2
    assert pairs[0][0] == str(tmp_path / "teachers/models/ResNet34_vanilla_imagenet_trial_0/ResNet34_best.pth")
    assert pairs[2][0].endswith("ResNet50_Imagenet_vanilla_imagenet_trial_0/ResNet50_Imagenet_best.pth")


def test_imagenet_scripts_on_two_machines_split_the_total_batch_over_both(tmp_path):
    (words,) = dry_run("run_imagenet_teacher.sh", NPROC="8", NNODES="2", NODE_RANK="1",
                       RDZV_ENDPOINT="node0:29400", TEACHERS="ResNet34", TOTAL_BATCH="512")
    assert words[:9] == ["torchrun", "--nproc_per_node=8", "--nnodes", "2", "--node_rank", "1",
                         "--rdzv_backend", "c10d", "--rdzv_endpoint"]
    opt = parse_teacher_args(words[words.index(str(REPO / "train_teacher.py")) + 1:])
    assert (opt.batch_size, opt.learning_rate) == (512 // 16, 0.2)


EXITING = """
import atexit, sys
from helper.cli import exit_process
atexit.register(lambda: print("interpreter teardown ran"))
print("saved", end="")
exit_process(int(sys.argv[1]))
"""


@pytest.mark.parametrize("under_torchrun", [True, False])
def test_an_entry_script_exits_with_its_status_and_its_output_flushed(under_torchrun):
    """Under torchrun the interpreter's teardown (where gloo's threads can abort) is skipped;
    a single process exits normally. Either way buffered output reaches the pipe."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "PYTHONUNBUFFERED")}  # buffered, so a lost flush shows
    if under_torchrun:
        env.update(RANK="0", WORLD_SIZE="2")
    result = subprocess.run([sys.executable, "-c", EXITING, "3"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 3
    assert result.stdout == ("saved" if under_torchrun else "savedinterpreter teardown ran\n")
