"""Test instrumentation: run train_teacher.py or train_student.py and record what each process did.

As a script (under torchrun, or alone) it runs the entry point unchanged, and each rank writes
``$PROBE_DIR/rank<R>.pt`` with

* ``batches``: the training-set indices of every batch it trained on, with the epoch;
* ``method_state`` and ``student``: the Distiller's own parts (memory banks, queues,
  embeddings) and the student, as they are at the end of the run; ``initial_student``: the
  student before the first step;
* ``writes``: every file-system write it made under ``$PROBE_WATCH`` (Python audit events:
  ``open`` for writing, ``mkdir``, ``rename``/``replace``, ``mkstemp``, ``remove``).

The entry scripts and the driver have no hook for this: the probe wraps ``dataset.build`` and
``Run.execute`` from outside, so the code under test is the code users run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
PATH_EVENTS = {"os.mkdir": 0, "os.rename": 1, "tempfile.mkstemp": 0, "os.remove": 0}


def run_probe(kind: str, args: list[str], probe_dir: Path, watch: Path, nproc: int = 2,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``kind`` (``teacher``/``student``) with ``args`` under ``torchrun --standalone`` with ``nproc``
    processes (``nproc=0``: a plain single process, no torchrun), recording into ``probe_dir``."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROBE_DIR": str(probe_dir), "PROBE_WATCH": str(watch.resolve())}
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, __file__, kind, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def load_ranks(probe_dir: Path, nproc: int) -> list[dict[str, Any]]:
    """What each rank recorded, in rank order."""
    import torch

    return [torch.load(probe_dir / f"rank{rank}.pt", map_location="cpu", weights_only=True) for rank in range(nproc)]


def _record_writes(watch: str, writes: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        elif event in PATH_EVENTS:
            path, writing = args[PATH_EVENTS[event]], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(watch):
                writes.append(f"{event} {path}")

    sys.addaudithook(hook)


class _RecordingLoader:
    """The training loader, noting the indices of every batch it hands out."""

    def __init__(self, loader: Any, batches: list[dict[str, Any]]) -> None:
        self.loader, self.batches, self.epoch = loader, batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.batches.append({"epoch": self.epoch, "indices": batch.indices.clone().cpu()})
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def main(kind: str, argv: list[str]) -> int:
    import torch

    import dataset
    from helper import pack
    from helper.cli import main as entry_point
    from helper.options import parse_student_pack, parse_teacher_args

    rank = int(os.environ.get("RANK", 0))
    writes: list[str] = []
    batches: list[dict[str, Any]] = []
    _record_writes(os.environ["PROBE_WATCH"], writes)

    build = dataset.build

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        bundle = build(*args, **kwargs)
        bundle.train = _RecordingLoader(bundle.train, batches)
        return bundle

    execute = pack.Pack.execute

    def recording_execute(runs: Any) -> Any:
        (run,) = runs.runs
        initial = {key: value.clone() for key, value in run.task.student.state_dict().items()}
        summary = execute(runs)
        record = {"rank": run.process.rank, "world_size": run.process.world_size, "batches": batches,
                  "initial_student": initial,
                  "method_state": run.task.trainable_state_dict(),
                  "student": run.task.student.state_dict(), "writes": list(writes)}
        torch.save(record, Path(os.environ["PROBE_DIR"]) / f"rank{rank}.pt")
        return summary

    dataset.build = recording_build
    pack.Pack.execute = recording_execute
    return entry_point(parse_teacher_args if kind == "teacher" else parse_student_pack, kind, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
