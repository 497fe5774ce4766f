"""Where a sweep's commands run: one after another here, a pool over this machine's GPUs, or a Slurm job array.

A command is one pack (one train_student.py process training several runs) or one teacher run;
it names the run folders it writes, and every command carries ``--resume auto``, so a command
that is stopped and started again continues where it stopped. The launchers differ only in
where and how many at a time:

* :class:`LocalLauncher` without GPUs: one command after another, its output on the terminal.
* :class:`LocalLauncher` with GPUs: ``R`` commands at a time on each listed GPU, each child
  with ``CUDA_VISIBLE_DEVICES`` set to its GPU and its output in ``SAVE_DIR/logs/<run>.log``.
* :class:`SlurmLauncher`: one job per command, submitted as one job array through submitit.
  Each job is a :class:`PackJob`: it runs the command and, when Slurm announces a timeout or a
  preemption, stops it (SIGTERM: the run saves and exits 143) and has itself requeued, to go on
  with ``--resume auto``.

The local children run in sessions of their own, so a Ctrl-C at the terminal reaches only the
sweep, which forwards one SIGTERM to each child and waits for them to save; a second signal is
forwarded too, and the runs then exit at once. A failed command is reported (with the runs it
left unfinished) and the others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from errors import UsageError

try:  # the Slurm jobs need submitit; the local launchers and the dry runs do without it
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # submitit is in requirements.txt; SlurmLauncher.launch says so if it is missing
    Checkpointable, DelayedSubmission = object, None

INTERRUPTED = {130, 143, -2, -15}  # exit statuses of a run stopped by SIGINT/SIGTERM (helper/cli.py)
NONFINITE = 3  # a pack's status when a member stopped on a non-finite loss (the others finished)
POLL_S = 0.1  # how often the local pool looks at its children
TAIL_LINES = 40  # lines of a failed command's output that its report quotes


@dataclass(frozen=True)
class Command:
    """One command of a sweep: its command line and the run folders it writes (one, or a pack's members)."""

    argv: tuple[str, ...]
    run_dirs: tuple[Path, ...]

    def __str__(self) -> str:
        return shlex.join(self.argv)

    @property
    def name(self) -> str:
        """The first run folder's name, and how many more the command writes."""
        more = len(self.run_dirs) - 1
        return self.run_dirs[0].name + (f" (+{more} more)" if more else "")


class Launcher(Protocol):
    """Runs a sweep's commands; ``blocked`` runs could not be planned (their teacher is missing)."""

    def describe(self, commands: Sequence[Command]) -> list[str]:
        """What a dry run says beyond the command lines (where and how they would run)."""

    def launch(self, commands: Sequence[Command], blocked: int) -> int:
        """Run (or submit) the commands; the sweep's exit status."""


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a ``summary.json`` that says the run finished."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def unfinished(command: Command) -> list[str]:
    """The names of the command's run folders whose ``summary.json`` does not say finished."""
    return [run_dir.name for run_dir in command.run_dirs if not is_finished(run_dir)]


def _failure(command: Command, status: int) -> str:
    """One line saying how ``command`` failed and which of its runs it left unfinished."""
    why = "a run stopped on a non-finite loss" if status == NONFINITE else (
        "interrupted; run the sweep again to resume" if status in INTERRUPTED else "failed")
    left = unfinished(command)
    return f"{command.name}: {why} (exit status {status}); unfinished: {', '.join(left) or 'none'}"


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "".join(deque(path.open(errors="replace"), maxlen=lines))
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# This machine.


class _Forwarder:
    """While installed, SIGINT and SIGTERM stop the sweep: each running child gets one SIGTERM per signal."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, running: dict[subprocess.Popen, Any]) -> None:
        self.running = running
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping {len(self.running)} running command(s)"
              + (" after they save" if first else " at once"), file=sys.stderr, flush=True)
        for process in list(self.running):
            process.send_signal(signal.SIGTERM)

    def __enter__(self) -> _Forwarder:
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


@dataclass(frozen=True)
class LocalLauncher:
    """Commands on this machine: one at a time, or ``per_gpu`` at a time on each of ``gpus``.

    With GPUs, each child sees only its GPU (``CUDA_VISIBLE_DEVICES``) and writes its output to
    ``log_dir/<first run folder>.log``, whose tail a failure report quotes.
    """

    gpus: tuple[str, ...] = ()
    per_gpu: int = 1
    log_dir: Path | None = None

    def slots(self) -> list[str | None]:
        """One entry per command that may run at once: its GPU (None: as the command says), GPUs interleaved."""
        return [gpu for _ in range(self.per_gpu) for gpu in self.gpus] or [None]

    def describe(self, commands: Sequence[Command]) -> list[str]:
        if not self.gpus:
            return []
        return [f"local: {self.per_gpu} command(s) at a time on each of GPU {','.join(self.gpus)}; "
                f"output in {self.log_dir}"]

    def _start(self, command: Command, gpu: str | None) -> tuple[subprocess.Popen, Path | None]:
        env, log, output = None, None, None
        if gpu is not None:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            log = self.log_dir / f"{command.run_dirs[0].name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            output = log.open("w")
        try:
            process = subprocess.Popen(list(command.argv), stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT if output else None, env=env, start_new_session=True)
        finally:
            if output is not None:
                output.close()
        return process, log

    def launch(self, commands: Sequence[Command], blocked: int) -> int:
        """Run every command, ``len(slots())`` at a time; a failure is reported and the rest goes on.

        Returns 0 when every command succeeded and none was blocked, 1 otherwise, and 128 + the
        signal's number when SIGINT/SIGTERM stopped the sweep (run it again to resume).
        """
        pending = deque(enumerate(commands, 1))
        free = self.slots()
        running: dict[subprocess.Popen, tuple[Command, str | None, Path | None]] = {}
        failed: list[str] = []
        total = len(commands)
        with _Forwarder(running) as forwarder:
            while running or (pending and forwarder.signum is None):
                while pending and free and forwarder.signum is None:
                    number, command = pending.popleft()
                    gpu = free.pop(0)
                    try:
                        process, log = self._start(command, gpu)
                    except OSError as error:  # a PYTHON that is not there, a log folder that cannot be written
                        failed.append(f"{command.name}: could not start: {error}")
                        free.append(gpu)
                        continue
                    running[process] = (command, gpu, log)
                    where = "" if gpu is None else f"GPU {gpu}: "
                    print(f"[{number}/{total}] {where}{command}" + (f"\n    output: {log}" if log else ""), flush=True)
                time.sleep(POLL_S)
                for process in [process for process in running if process.poll() is not None]:
                    command, gpu, log = running.pop(process)
                    free.append(gpu)
                    if process.returncode != 0:
                        failed.append(_failure(command, process.returncode))
                        if log is not None and forwarder.signum is None:
                            print(f"failed: {failed[-1]}; the end of {log}:\n{_tail(log)}", file=sys.stderr)
        for line in failed:
            print(f"failed: {line}", file=sys.stderr)
        started = total - len(pending)
        print(f"{started - len(failed)} of {total} command(s) succeeded"
              + (f", {len(pending)} not started" if pending else "")
              + (f"; {blocked} run(s) not started for want of a teacher" if blocked else ""), file=sys.stderr)
        if forwarder.signum is not None:
            print("interrupted; run the sweep again to resume", file=sys.stderr)
            return 128 + forwarder.signum
        return 1 if failed or blocked else 0


# ---------------------------------------------------------------------------------------------
# Slurm.


class PackJob(Checkpointable):
    """One Slurm job: run one command (under torchrun when the job has several GPUs) and return its run folders.

    submitit calls :meth:`checkpoint` when Slurm announces a timeout or a preemption (SIGUSR2,
    ``signal_delay_s`` before the end): it stops the command with SIGTERM, waits for it to save,
    and returns the job itself to be requeued; the requeued job runs the same command, which
    resumes (``--resume auto``). The command ignores SIGUSR2, which Slurm sends to every process
    of the job. When Slurm itself ends the job (``scontrol requeue``, ``scancel``, a preemption
    without warning), the command gets Slurm's SIGTERM and saves, and the job waits for Slurm to
    end it rather than report a failure, so a requeued job's result is the requeued run's.
    """

    STOP_WAIT_S = 600.0  # how long checkpoint() waits for the command to save (Slurm kills it after signal_delay_s)
    KILLED_WAIT_S = 300.0  # how long a job stopped by Slurm waits to be ended before it reports the stop

    def __init__(self, argv: Sequence[str], run_dirs: Sequence[str | Path], gpus: int = 1) -> None:
        self.argv = tuple(argv)
        self.run_dirs = tuple(str(run_dir) for run_dir in run_dirs)
        self.gpus = gpus
        self._process: subprocess.Popen | None = None
        self._stopping = False

    def __getstate__(self) -> dict[str, Any]:
        """What is pickled for (re)submission: the command, not the running child."""
        return {"argv": self.argv, "run_dirs": self.run_dirs, "gpus": self.gpus}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def command(self) -> list[str]:
        """The command line the job runs: ``python -m torch.distributed.run --standalone`` with several GPUs."""
        python, *rest = self.argv
        if self.gpus > 1:
            return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.gpus), *rest]
        return [python, *rest]

    def __call__(self) -> list[str]:
        print(f"running: {shlex.join(self.command())}", flush=True)
        self._stopping = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._stopped_by_slurm)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, errors="replace",
                                             preexec_fn=_ignore_usr2)
            reader = threading.Thread(target=_tee, args=(self._process.stdout, tail), daemon=True)
            reader.start()
            while self._process.poll() is None:  # poll, not wait(): checkpoint() runs in a signal handler
                time.sleep(1.0)
            reader.join(timeout=30)  # a grandchild that outlived the command may hold the pipe open
            status = self._process.returncode
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if status == 0:
            return list(self.run_dirs)
        if self._stopping:  # Slurm is ending the job: a requeued job runs again, with its own result
            time.sleep(self.KILLED_WAIT_S)
        raise RuntimeError(f"the command exited with status {status}"
                           + (" after a SIGTERM" if self._stopping else "")
                           + f"; unfinished runs: {', '.join(self._unfinished()) or 'none'}; "
                           f"the end of its output:\n{''.join(tail)}")

    def _unfinished(self) -> list[str]:
        return unfinished(Command(self.argv, tuple(Path(run_dir) for run_dir in self.run_dirs)))

    def _stopped_by_slurm(self, signum: int, frame: Any) -> None:
        print(f"{signal.Signals(signum).name}: the command saves and stops", flush=True)
        self._stopping = True

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Stop the command (SIGTERM: it saves and exits 143), wait for it, and resubmit this job."""
        process = self._process
        if process is not None and process.returncode is None:
            self._stopping = True
            process.send_signal(signal.SIGTERM)
            _wait_without_reaping(process.pid, self.STOP_WAIT_S)
        return DelayedSubmission(self, *args, **kwargs)


def _ignore_usr2() -> None:
    """In the child, before exec: ignore SIGUSR2, Slurm's warning to the job (the job, not the run, acts on it)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _tee(stream: Any, tail: deque[str]) -> None:
    """Copy the child's output to the job's log, keeping the last lines for a failure report."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line)


def _wait_without_reaping(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` exits (at most ``timeout`` s), leaving it for its Popen to reap.

    Popen.wait() cannot be used here: :meth:`PackJob.checkpoint` runs in a signal handler, maybe
    while the interrupted code holds the Popen's wait lock.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:  # already reaped
            return
        time.sleep(0.2)


@dataclass(frozen=True)
class SlurmLauncher:
    """One Slurm job per command, submitted as one job array through submitit.

    ``gpus_per_job`` 0 runs on the CPUs (a CPU cluster; give ``--device cpu`` in ``EXTRA_ARGS``);
    more than one runs each command under torchrun inside its job. ``wait`` waits for every job
    and reports the results; otherwise the sweep returns once the array is submitted.
    """

    partition: str
    time_min: int
    folder: Path
    gpus_per_job: int = 1
    array_parallelism: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    wait: bool = False
    max_num_timeout: int = 50  # requeues after timeouts; each continues from latest.pth, so they cost little

    def parameters(self) -> dict[str, Any]:
        """The executor's parameters (``AutoExecutor.update_parameters``)."""
        optional = {"gpus_per_node": self.gpus_per_job or None, "slurm_array_parallelism": self.array_parallelism,
                    "cpus_per_task": self.cpus_per_job, "mem_gb": self.mem_gb}
        return {"name": "kd_sweep", "slurm_partition": self.partition, "timeout_min": self.time_min, "nodes": 1,
                "tasks_per_node": 1, **{key: value for key, value in optional.items() if value is not None}}

    def describe(self, commands: Sequence[Command]) -> list[str]:
        settings = " ".join(f"{key}={value}" for key, value in
                            {**self.parameters(), "slurm_max_num_timeout": self.max_num_timeout}.items())
        torchrun = f"; each command under torchrun on {self.gpus_per_job} GPUs" if self.gpus_per_job > 1 else ""
        return [f"slurm: one job array of {len(commands)} job(s), logs in {self.folder}{torchrun}; {settings}"]

    def launch(self, commands: Sequence[Command], blocked: int) -> int:
        """Submit the array and print its job ids; with ``wait``, wait for the jobs and report them."""
        try:
            import submitit
        except ImportError:
            raise UsageError("--launcher slurm needs submitit: pip install -r requirements.txt") from None
        if not commands:
            print("nothing to submit" + (f"; {blocked} run(s) not started for want of a teacher" if blocked else ""),
                  file=sys.stderr)
            return 1 if blocked else 0
        executor = submitit.AutoExecutor(self.folder, cluster="slurm", slurm_max_num_timeout=self.max_num_timeout)
        executor.update_parameters(**self.parameters())
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint, which we report
                jobs = executor.submit_array([PackJob(command.argv, command.run_dirs, self.gpus_per_job)
                                              for command in commands])
        except (submitit.core.utils.FailedJobError, OSError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise UsageError(f"Slurm refused the job array: {reason}") from None
        for job, command in zip(jobs, commands):
            print(f"job {job.job_id}: {command}", flush=True)
        print(f"submitted {len(jobs)} job(s) as array {jobs[0].job_id.split('_')[0]}; logs in {self.folder} "
              f"(<job id>_0_log.out/.err)" + (f"; {blocked} run(s) not started for want of a teacher" if blocked
                                               else ""), file=sys.stderr, flush=True)
        if not self.wait:
            return 1 if blocked else 0
        failed = []
        try:
            for job, command in zip(jobs, commands):
                try:
                    job.result()
                except Exception as error:  # submitit's error carries the job's traceback and our tail
                    failed.append(f"job {job.job_id}, {command.name}: {error}")
        except KeyboardInterrupt:
            print("stopped waiting; the jobs go on (squeue shows them)", file=sys.stderr)
            return 130
        for line in failed:
            print(f"failed: {line}", file=sys.stderr)
        print(f"{len(jobs) - len(failed)} of {len(jobs)} job(s) succeeded", file=sys.stderr)
        return 1 if failed or blocked else 0


# ---------------------------------------------------------------------------------------------
# The flags that choose a launcher.

SLURM_FLAGS = ("partition", "gpus_per_job", "time", "array_parallelism", "cpus_per_job", "mem_gb", "slurm_folder",
               "wait")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher flags of ``sweep.py``."""
    local = parser.add_argument_group("where the commands run")
    local.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: on this machine; slurm: one job per command, as one Slurm job array")
    local.add_argument("--gpus", help="local: run on these GPUs (comma list of numbers), --runs_per_gpu at a time "
                                      "on each; each command sees only its GPU")
    local.add_argument("--runs_per_gpu", type=int, help="local, with --gpus: commands at a time on each GPU "
                                                        "(default 1)")
    slurm = parser.add_argument_group("Slurm (with --launcher slurm)")
    slurm.add_argument("--partition", help="the partition the jobs run in (required)")
    slurm.add_argument("--time", type=int, help="minutes per job (required); a job that runs out is requeued and "
                                                "its runs continue from latest.pth")
    slurm.add_argument("--gpus_per_job", type=int, help="GPUs per job (default 1; 0 on a CPU cluster; more than one "
                                                        "runs each command under torchrun)")
    slurm.add_argument("--array_parallelism", type=int, help="jobs of the array running at once (default: submitit's "
                                                             "256)")
    slurm.add_argument("--cpus_per_job", type=int, help="CPUs per job (default: the partition's)")
    slurm.add_argument("--mem_gb", type=float, help="memory per job in GB (default: the partition's)")
    slurm.add_argument("--slurm_folder", help="where submitit writes the jobs' files and logs (default SAVE_DIR/slurm)")
    slurm.add_argument("--wait", action="store_true", help="wait for every job and report the results")


def parse_gpus(text: str) -> tuple[str, ...]:
    """``"0,1,3"`` → ``("0", "1", "3")``: distinct non-negative GPU numbers."""
    gpus = tuple(part.strip() for part in text.split(","))
    if not all(gpu.isdigit() for gpu in gpus) or len(set(gpus)) < len(gpus):
        raise UsageError(f"--gpus {text!r} must list distinct GPU numbers separated by commas, e.g. 0,1,2,3")
    return gpus


def _check_numbers(args: argparse.Namespace) -> None:
    positive = ("runs_per_gpu", "time", "array_parallelism", "cpus_per_job", "mem_gb")
    for name in positive:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name} {value} must be positive")
    if args.gpus_per_job is not None and args.gpus_per_job < 0:
        raise UsageError(f"--gpus_per_job {args.gpus_per_job} must be 0 (a CPU cluster) or more")


def from_args(args: argparse.Namespace, save_dir: str, gpus_env: str | None) -> Launcher:
    """The launcher the flags choose; a flag that does not fit the others is a :class:`~errors.UsageError`.

    ``gpus_env`` is the sweep's ``GPUS``, which passes ``--gpu_id`` to every command: it cannot be
    combined with ``--gpus`` (which GPU would a command use?) nor with Slurm jobs (which get
    theirs from Slurm).
    """
    _check_numbers(args)
    if args.launcher != "slurm":
        given = [f"--{name}" for name in SLURM_FLAGS if getattr(args, name) not in (None, False)]
        if given:
            raise UsageError(f"{' '.join(given)} {'needs' if len(given) == 1 else 'need'} --launcher slurm")
        if args.runs_per_gpu is not None and args.gpus is None:
            raise UsageError("--runs_per_gpu needs --gpus (the GPUs to share out)")
        if args.gpus is None:
            return LocalLauncher()
        if gpus_env:
            raise UsageError(f"GPUS={gpus_env} and --gpus {args.gpus} both choose GPUs; unset GPUS")
        return LocalLauncher(parse_gpus(args.gpus), args.runs_per_gpu or 1, Path(save_dir) / "logs")
    local = [flag for flag, value in (("--gpus", args.gpus), ("--runs_per_gpu", args.runs_per_gpu)) if value]
    if local:
        raise UsageError(f"{' '.join(local)} {'is' if len(local) == 1 else 'are'} for --launcher local; with "
                         "--launcher slurm each job gets --gpus_per_job GPUs")
    if gpus_env:
        raise UsageError(f"GPUS={gpus_env} is for the local launcher; with --launcher slurm each job gets "
                         "--gpus_per_job GPUs from Slurm; unset GPUS")
    missing = [f"--{name}" for name in ("partition", "time") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"--launcher slurm needs {' and '.join(missing)} (the partition and the minutes per job)")
    return SlurmLauncher(
        partition=args.partition, time_min=args.time,
        folder=Path(args.slurm_folder) if args.slurm_folder else Path(save_dir) / "slurm",
        gpus_per_job=1 if args.gpus_per_job is None else args.gpus_per_job, array_parallelism=args.array_parallelism,
        cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, wait=args.wait)
