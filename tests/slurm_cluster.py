"""A real single-node Slurm on the loopback address, for the tests of the Slurm sweeps.

:func:`start_cluster` writes a private munge key and a ``slurm.conf`` under one folder, starts
``munged``, ``slurmctld`` and ``slurmd`` in the foreground as child processes (no systemd, no
cgroups: processes are tracked through /proc, tasks are not confined) and returns once the node
is idle. Everything the cluster owns lives in that folder: the key, the munge socket, the state,
the spool, the logs and the pid files; its ports are fresh free loopback ports and its daemons
bind 127.0.0.1 only, so clusters of separate test sessions on one machine do not meet. Jobs are
requeueable, so ``scontrol requeue`` of a running job runs it again. There is no accounting
database: ``sacct`` fails, and job states are read with ``squeue`` / ``scontrol show job``
(finished jobs stay listed for ``MinJobAge`` seconds).

Where the cluster cannot start (Slurm or munge not installed, not root, a daemon that dies) the
error is a ``RuntimeError`` with the reason and the tail of the daemons' logs: the tests that
use the fixture fail with it, they are never skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NODE = "kdnode"
PARTITION = "debug"
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# A Unix socket path may hold 107 bytes; slurmd puts one per job step in its spool folder
# (spool/kdnode_<job>.<step>, up to 32 more).
MAX_ROOT = 70
PR_SET_PDEATHSIG = 1
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")


@dataclass
class SlurmCluster:
    """A running cluster: its folder, its one partition, and the environment its clients need."""

    root: Path
    partition: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a Slurm client (``run("sbatch", "--wrap", "true")``) against this cluster; its stdout.

        Raises ``RuntimeError`` with the command's stderr when it fails or hangs.
        """
        try:
            result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"{' '.join(args)} did not answer in {timeout:g} s") from error
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``NodeList``, ...)."""
        words = self.run("scontrol", "-o", "show", "job", job_id).split()
        return dict(word.split("=", 1) for word in words if "=" in word)

    def job_state(self, job_id: str) -> str:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...) as slurmctld reports it."""
        return self.job_info(job_id)["JobState"]

    def wait_job(self, job_id: str, timeout: float = 30) -> str:
        """Wait until the job has ended; its final state. ``RuntimeError`` on timeout."""
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id)) in ACTIVE_STATES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {state} after {timeout:g} s\n{self.log_tail()}")
            time.sleep(0.2)
        return state

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no job is pending, running or completing. ``RuntimeError`` on timeout."""
        deadline = time.monotonic() + timeout
        while jobs := self.run("squeue", "-h", "-o", "%i %T").strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still queued after {timeout:g} s:\n{jobs}\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of each daemon's log (its own output where it keeps none), for error messages."""
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            log = self.root / "log" / f"{name}.log"
            if not log.exists():
                log = log.with_suffix(".out")
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(nothing)"]
            parts.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and kill whatever of this cluster is still alive."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(RuntimeError):
                self.run("scancel", f"--partition={self.partition}", timeout=5)
                self.wait_idle(timeout=10)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is not None:
                _end(process)
        _kill_leftovers(self.conf)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def processes_of(conf: Path) -> list[int]:
    """The ids of the live processes started under the configuration ``conf`` (daemons, slurmstepd, jobs).

    They are found by ``SLURM_CONF=<conf>`` in their environment: the daemons are started with it,
    slurmstepd inherits it from slurmd and a job's script from sbatch.
    """
    marker = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")  # empty for a zombie
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


def _kill_leftovers(conf: Path) -> None:
    """SIGKILL what is still alive of this cluster: slurmstepd detaches from slurmd, so a job that
    did not end when cancelled outlives the daemons."""
    for pid in processes_of(conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _program(name: str) -> str:
    """The path of a Slurm or munge program; ``RuntimeError`` when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install slurm-wlm munge)")
    return path


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def slurm_conf(root: Path, cpus: int, ports: list[int]) -> str:
    """The text of ``slurm.conf`` for a one-node cluster whose files all live under ``root``."""
    return f"""\
# Written by tests/slurm_cluster.py. Daemons bind 127.0.0.1 only (NoInAddrAny). cred_expire=5 (the
# least allowed) lets a requeued job start again 6 s later instead of 121; sched_interval=1 starts it
# then; config_overrides lets CPUs differ from the hardware.
ClusterName=kdtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
CommunicationParameters=NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg={shutil.which("true") or "/bin/true"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
SlurmdParameters=config_overrides
KillWait=2
MinJobAge=300
Waittime=0
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(root: Path, cpus: int | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``root``, and return it once the node is idle.

    ``cpus`` is the node's CPU count as Slurm sees it (default: this machine's, but at least 2 so
    that two 1-CPU jobs always run side by side); a test may ask for more job slots than there are
    cores. Raises ``RuntimeError`` with the reason and the daemons' log tails when the cluster does
    not come up; nothing it started is left running then.
    """
    root = Path(root).resolve()
    if len(str(root)) > MAX_ROOT:
        raise RuntimeError(f"{root} is longer than {MAX_ROOT} characters: Slurm's and munge's Unix sockets "
                           "under it would not fit")
    if os.geteuid() != 0:
        raise RuntimeError("a local Slurm cluster needs root (SlurmUser=root, slurmd launches jobs as root)")
    programs = {name: _program(name) for name in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")}
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    (root / "plugstack.conf").write_text("")
    (root / "slurm.conf").write_text(slurm_conf(root, cpus or max(2, os.cpu_count() or 1), _free_ports(2)))
    # Slurm variables of an enclosing job (tests run inside one) would steer the clients elsewhere.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))}
    path = [*os.environ.get("PATH", "").split(os.pathsep), *SBIN]
    env.update(SLURM_CONF=str(root / "slurm.conf"), PATH=os.pathsep.join(dict.fromkeys(filter(None, path))))
    cluster = SlurmCluster(root=root, partition=PARTITION, env=env)
    try:
        munge = root / "munge"
        cluster.processes["munged"] = _daemon(cluster, "munged", [
            programs["munged"], "--foreground", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
            f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed"])
        _wait(cluster, lambda: (munge / "munge.socket").exists(), "munged to open its socket", 10)
        cluster.processes["slurmctld"] = _daemon(cluster, "slurmctld", [programs["slurmctld"], "-D", "-i"])
        cluster.processes["slurmd"] = _daemon(cluster, "slurmd", [programs["slurmd"], "-D", "-N", NODE])
        _wait(cluster, lambda: _node_state(cluster) == "idle", f"node {NODE} to be idle", 30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _daemon(cluster: SlurmCluster, name: str, command: list[str]) -> subprocess.Popen:
    """Start one daemon in the foreground, its own output in ``log/<name>.out``."""
    with (cluster.root / "log" / f"{name}.out").open("ab") as out:
        return subprocess.Popen(command, env=cluster.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cluster.root, start_new_session=True,
                                preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _node_state(cluster: SlurmCluster) -> str:
    try:
        return cluster.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%t", timeout=10).strip()
    except RuntimeError:
        return ""


def _wait(cluster: SlurmCluster, ready, what: str, timeout: float) -> None:
    """Poll ``ready()`` until it is true; ``RuntimeError`` when a daemon dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} while waiting for {what}\n"
                                   f"{cluster.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}\n{cluster.log_tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module", name="slurm_cluster")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The fixture ``slurm_cluster``: a running cluster for a test module, stopped afterwards whatever the tests did.

    A test module takes it with ``from tests.slurm_cluster import slurm_cluster_fixture  # noqa: F401``
    (imported under the fixture's own name, each test's ``slurm_cluster`` argument would be a
    redefinition of the import to ruff, F811).
    """
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
