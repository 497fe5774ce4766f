"""``sweep.py distill --launcher slurm`` on a real one-node Slurm: a job array of packs that survives being stopped.

Two packs run as one array. One job is requeued from outside (``scontrol requeue``: Slurm sends
SIGTERM to everything in the job and starts it again); the other gets the warning Slurm sends
before a time limit or a preemption (SIGUSR2), on which the job stops its pack itself and
requeues. Both packs then resume and finish, and ``--wait`` reports two successes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts import sweep
from tests.runfolders import REPO
from tests.slurm_cluster import slurm_cluster_fixture  # noqa: F401

EPOCHS = 8  # enough for a job to be stopped halfway
TIMEOUT_S = 300  # for the whole sweep, requeue included


def wait_until(ready, what: str, timeout: float, report) -> None:
    """Poll ``ready()``; on timeout fail with ``what`` and ``report()`` (the queue and the jobs' logs)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{report()}")
        time.sleep(0.2)


def latest_epoch(run_dir: Path) -> int:
    """Epochs in the run's metrics.jsonl so far (0 before its first epoch ends)."""
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_a_distill_sweep_runs_as_a_job_array_and_stopped_packs_resume(tmp_path, cifar100_root, cifar100_teacher,
                                                                      slurm_cluster):
    teachers = tmp_path / "teachers"
    (teachers / "resnet8_vanilla").mkdir(parents=True)
    shutil.copy(cifar100_teacher, teachers / "resnet8_vanilla" / "ckpt_epoch_240.pth")  # RepDistiller's layout
    save = tmp_path / "save"
    env = {**os.environ, **slurm_cluster.env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "DATA_ROOT": str(cifar100_root), "SAVE_DIR": str(save), "TEACHER_DIR": str(teachers),
           "PAIRS": "resnet8:resnet8", "METHODS": "kd,crd", "TRIALS": "2",
           "EXTRA_ARGS": f"--epochs {EPOCHS} --num_workers 0 --batch_size 32 --nce_k 64 --print_freq 1000 "
                         "--device cpu --skip_validation"}
    config = sweep.SweepConfig.from_env(env)
    packs = sweep.distill_plan(config).commands
    assert [len(pack.run_dirs) for pack in packs] == [2, 2]  # one pack per trial, KD and CRD in each
    run_dirs = [run_dir for pack in packs for run_dir in pack.run_dirs]

    command = [sys.executable, str(REPO / "scripts" / "sweep.py"), "distill", "--launcher", "slurm",
               "--partition", slurm_cluster.partition, "--gpus_per_job", "0", "--time", "10",
               "--array_parallelism", "2", "--wait"]
    sweep_process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sweep_process.stdout), daemon=True)
    reader.start()
    slurm_folder = save / "slurm"

    def report() -> str:
        logs = [f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in sorted(slurm_folder.glob("*_log*"))]
        ended = "the sweep is still waiting" if sweep_process.poll() is None else \
            f"the sweep exited with {sweep_process.returncode}:\n{sweep_process.stderr.read()}"
        queue = slurm_cluster.run("squeue", "-o", "%i %T %r %M")
        return "\n".join([f"squeue:\n{queue}", f"sweep stdout: {''.join(lines)}", ended, *logs])

    try:
        wait_until(lambda: len(lines) >= 2, "the job ids", 60, report)
        jobs = [line.split(":")[0].removeprefix("job ") for line in lines[:2]]
        assert [line.split(": ", 1)[1].strip() for line in lines[:2]] == [str(pack) for pack in packs]

        # Stop each pack once it has trained an epoch and before it has finished.
        for pack, job, stop in zip(packs, jobs, (["scontrol", "requeue"], ["scancel", "--signal=USR2"])):
            wait_until(lambda pack=pack: latest_epoch(pack.run_dirs[0]) >= 1, "a pack's first epoch", 120, report)
            assert latest_epoch(pack.run_dirs[0]) < EPOCHS, "the pack finished before it could be stopped"
            slurm_cluster.run(*stop, job)

        wait_until(lambda: sweep_process.poll() is not None, "the sweep to report the jobs", TIMEOUT_S, report)
        reader.join(timeout=10)
        err = sweep_process.stderr.read()
        assert sweep_process.returncode == 0, report() + err
        assert "2 of 2 job(s) succeeded" in err
    finally:
        if sweep_process.poll() is None:
            sweep_process.kill()
            sweep_process.wait()

    logs = [(slurm_folder / f"{job}_0_log.out").read_text() for job in jobs]
    for job, log in zip(jobs, logs):
        assert slurm_cluster.job_info(job)["Restarts"] == "1"
        assert log.count("running: ") == 2 and log.count("resumed from") == 2  # twice, then both members resumed
        assert "continue with --resume auto" in log  # the pack was stopped cleanly (SIGTERM), not killed
    assert "SIGTERM: the command saves and stops" in logs[0]  # Slurm stopped it, the job waited to be requeued
    assert "Calling checkpoint method" in logs[1] and "Requeued job" in logs[1]  # the job stopped it and requeued
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["finished"] is True and summary["epochs"] == EPOCHS, run_dir
        assert (run_dir / "resnet8_last.pth").is_file() and (run_dir / "latest.pth").is_file()
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, EPOCHS + 1)), run_dir  # every epoch once: resumed, not restarted


@pytest.mark.parametrize("partition, gpus, reason", [
    ("nosuchpartition", "0", "invalid partition specified: nosuchpartition"),
    (None, "1", "Invalid generic resource (gres) specification"),  # a GPU per job, on a cluster without GPUs
])
def test_a_job_array_slurm_refuses_is_one_line_and_exit_2(partition, gpus, reason, tmp_path, slurm_cluster):
    teacher = tmp_path / "teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    teacher.touch()
    env = {**os.environ, **slurm_cluster.env, "PYTHON": sys.executable, "SAVE_DIR": str(tmp_path / "save"),
           "TEACHER_DIR": str(tmp_path / "teachers"), "PAIRS": "resnet8:resnet8", "METHODS": "kd", "TRIALS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), "distill", "--launcher", "slurm",
                           "--partition", partition or slurm_cluster.partition, "--gpus_per_job", gpus, "--time", "5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: Slurm refused the job array: sbatch: error: ") and reason in done.stderr
    assert slurm_cluster.run("squeue", "-h").strip() == ""
