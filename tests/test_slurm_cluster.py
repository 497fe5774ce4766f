"""The local Slurm of tests/slurm_cluster.py: jobs run side by side, a requeued job runs again, submitit works.

The Slurm sweeps' tests stand on this cluster, so here it is checked against what they rely on:
two 1-CPU jobs at once on the partition, ``scontrol requeue`` of a running job restarting its
script (``SLURM_RESTART_COUNT`` 1 the second time), and a function submitted through
``submitit.AutoExecutor`` coming back from a real job run by this interpreter.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import submitit

from tests import slurm_cluster as cluster_module
from tests.slurm_cluster import NODE, SlurmCluster, processes_of, slurm_cluster_fixture, start_cluster  # noqa: F401


def slurm_ports(cluster: SlurmCluster) -> list[str]:
    """The cluster's SlurmctldPort and SlurmdPort, from its slurm.conf."""
    return re.findall(r"^Slurm(?:ctld|d)Port=(\d+)$", cluster.conf.read_text(), re.MULTILINE)


def sbatch(cluster: SlurmCluster, out: Path, script: str) -> str:
    """Submit ``script`` as a 1-CPU job on the cluster's partition; its id."""
    return cluster.run("sbatch", "--parsable", "--cpus-per-task=1", f"--partition={cluster.partition}",
                       f"--output={out}", "--wrap", script).strip()


def wait_for(condition, what: str, cluster: SlurmCluster, timeout: float = 30) -> None:
    """Poll ``condition()`` until true; fail the test with the daemons' logs after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{cluster.log_tail()}")
        time.sleep(0.2)


def test_two_one_cpu_jobs_run_side_by_side(slurm_cluster: SlurmCluster, tmp_path: Path):
    # Each job waits (up to 20 s) for the other's file: they finish only if they run at the same time.
    scripts = {name: f"touch {tmp_path}/{name}; for i in $(seq 100); do [ -e {tmp_path}/{other} ] && break; "
                     f"sleep 0.2; done; [ -e {tmp_path}/{other} ] && echo $SLURM_JOB_ID > {tmp_path}/{name}.done"
               for name, other in (("a", "b"), ("b", "a"))}
    jobs = {name: sbatch(slurm_cluster, tmp_path / f"{name}.log", script) for name, script in scripts.items()}
    for name, job in jobs.items():
        assert slurm_cluster.wait_job(job) == "COMPLETED", (tmp_path / f"{name}.log").read_text()
        assert (tmp_path / f"{name}.done").read_text().strip() == job
        assert slurm_cluster.job_info(job)["NodeList"] == NODE
    slurm_cluster.wait_idle()


def test_a_requeued_running_job_runs_again(slurm_cluster: SlurmCluster, tmp_path: Path):
    starts = tmp_path / "starts"
    job = sbatch(slurm_cluster, tmp_path / "job.log",
                 f'echo "start ${{SLURM_RESTART_COUNT:-0}}" >> {starts}; sleep 3')
    wait_for(lambda: starts.exists(), "the first start", slurm_cluster)
    assert slurm_cluster.job_state(job) == "RUNNING"
    slurm_cluster.run("scontrol", "requeue", job)
    assert slurm_cluster.wait_job(job, timeout=40) == "COMPLETED", (tmp_path / "job.log").read_text()
    assert starts.read_text().splitlines() == ["start 0", "start 1"]
    assert slurm_cluster.job_info(job)["Restarts"] == "1"


def test_submitit_runs_a_function_in_a_job(slurm_cluster: SlurmCluster, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch):
    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm_cluster.env[name])

    def where(value: int) -> tuple[int, str, str]:
        import os
        import sys

        return value * 2, os.environ["SLURM_JOB_ID"], sys.executable

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, cpus_per_task=1, timeout_min=5)
    job = executor.submit(where, 21)
    # Without accounting sacct fails, so submitit waits on the result file alone: give up in time.
    wait_for(job.done, f"submitit job {job.job_id} (its log: {job.paths.stderr})", slurm_cluster, timeout=40)
    assert job.result() == (42, job.job_id, sys.executable), job.stderr()


def test_a_second_cluster_runs_beside_and_stops_clean(slurm_cluster: SlurmCluster,
                                                      tmp_path_factory: pytest.TempPathFactory):
    second = start_cluster(tmp_path_factory.mktemp("second"), cpus=3)
    try:
        assert slurm_ports(second) != slurm_ports(slurm_cluster)
        node = second.run("scontrol", "-o", "show", "node", NODE)
        assert "CPUTot=3 " in node, node
        job = sbatch(second, second.root / "sleep.log", "sleep 300")
        wait_for(lambda: second.job_state(job) == "RUNNING", "the job to run", second)
        daemons = dict(second.processes)
        assert len(processes_of(second.conf)) > len(daemons)  # the daemons, slurmstepd, the job's shell and sleep
    finally:
        second.stop()
    assert all(process.poll() is not None for process in daemons.values())
    assert processes_of(second.conf) == []
    assert slurm_cluster.run("sinfo", "-h", "-o", "%t").strip() == "idle"


def test_a_cluster_that_cannot_start_says_why(tmp_path_factory: pytest.TempPathFactory,
                                              monkeypatch: pytest.MonkeyPatch):
    written = cluster_module.slurm_conf
    monkeypatch.setattr(cluster_module, "slurm_conf", lambda *args: written(*args) + "NoSuchParameter=1\n")
    root = tmp_path_factory.mktemp("broken")
    with pytest.raises(RuntimeError, match=r"(?s)(slurmctld|slurmd) exited with status \d+.*NoSuchParameter"):
        start_cluster(root)
    assert processes_of(root / "slurm.conf") == []
