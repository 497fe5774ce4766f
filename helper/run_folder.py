"""Run folders: nothing a run saved is overwritten, and one run at a time writes a folder.

A run folder holds a run once it holds a summary, metrics or a checkpoint. Starting the same
command again without ``--resume`` would overwrite all three, so it is refused; two copies of
a command started together would write the same files in turn, so a run holds an exclusive
``flock`` on ``run.lock`` in its folder while it runs. The kernel drops the lock when the
process ends in any way, so the file a killed run leaves behind blocks nobody.

Both checks, and :func:`check_writable`, run after every option is validated and before the
first write: a refused run leaves the save folder as it found it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

from errors import UsageError

LOCK_NAME = "run.lock"
RUN_FILES = ("summary.json", "metrics.jsonl")
CLAIM_ATTEMPTS = 5
BUSY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def check_writable(path: Path) -> None:
    """Refuse ``path`` when it cannot be created or written, before anything is written.

    The deepest part of ``path`` that exists must be a folder this process may write into, so
    that a read-only folder (or a file) anywhere below ``--save_dir`` is found now, not at the
    first checkpoint.
    """
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {probe} is not a writable folder; "
                         "pick a --save_dir you can write to")


def saved_files(run_dir: Path) -> list[str]:
    """The names of what a run saved in ``run_dir`` (summary, metrics, checkpoints); empty files do not count."""
    if not run_dir.is_dir():
        return []
    return sorted(entry.name for entry in run_dir.iterdir()
                  if (entry.name in RUN_FILES or entry.suffix == ".pth") and entry.is_file()
                  and entry.stat().st_size > 0)


def _refuse_if_it_holds_a_run(run_dir: Path) -> None:
    saved = saved_files(run_dir)
    if saved:
        shown = ", ".join(saved[:4]) + (", …" if len(saved) > 4 else "")
        raise UsageError(f"{run_dir} already holds a run ({shown}); continue it with --resume auto, "
                         "or start a new one with another --trial")


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
    return list(reversed(missing))


def _owner(descriptor: int) -> str:
    """Who holds the lock, as its owner wrote it (``pid 123 on host``); written right after locking."""
    words = os.pread(descriptor, 256, 0).decode(errors="replace").split()
    if not words:
        return "pid unknown"
    return f"pid {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")


def _is_the_lock_file(descriptor: int, path: Path) -> bool:
    """Whether ``descriptor`` still is the file at ``path`` (its owner may have removed it meanwhile)."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class RunFolderLock:
    """The exclusive claim of one run on its folder; release it with :meth:`close` (or ``with``).

    Releasing removes the lock file, and the folders the claim created if nothing was written
    into them, so that a run refused after claiming leaves nothing behind.
    """

    def __init__(self, run_dir: Path, descriptor: int, created: list[Path]):
        self.run_dir, self.path = run_dir, run_dir / LOCK_NAME
        self._descriptor: int | None = descriptor
        self._created = created

    @classmethod
    def acquire(cls, run_dir: Path) -> RunFolderLock:
        """Lock ``run_dir/run.lock`` without waiting; a usage error naming the holder if another run has it."""
        created = _make_folders(run_dir)
        path = run_dir / LOCK_NAME
        for _ in range(CLAIM_ATTEMPTS):
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _owner(descriptor) if error.errno in BUSY_ERRNOS else None
                os.close(descriptor)
                if holder is None:
                    raise OSError(error.errno, f"cannot lock run folder {run_dir}: {error.strerror}") from error
                raise UsageError(f"{run_dir} is in use by another run ({holder}); wait for it to end, "
                                 "or start this one with another --trial") from None
            if _is_the_lock_file(descriptor, path):
                return cls(run_dir, descriptor, created)
            os.close(descriptor)  # its holder removed it between our open and our lock: open the new one
        raise OSError(errno.EAGAIN, f"cannot lock run folder {run_dir}: its lock file keeps changing")

    def record_owner(self) -> None:
        """Write this process's pid and host into the lock file, for a refused second run to name."""
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def close(self) -> None:
        """Release the claim (once; later calls do nothing)."""
        if self._descriptor is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so nobody else holds this file
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)  # data-loader workers share the descriptor
        os.close(self._descriptor)
        self._descriptor = None
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break  # something was written into it: keep it and everything above

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def claim_run_folder(run_dir: Path, resuming: bool) -> RunFolderLock:
    """Claim ``run_dir`` for this run: refused when another run holds it or, unless resuming, when it holds a run.

    Call it after every option has been validated and before training: creating the folder
    and its lock file is the run's first write.
    """
    run_dir = Path(run_dir)
    if not resuming:
        _refuse_if_it_holds_a_run(run_dir)
    lock = RunFolderLock.acquire(run_dir)
    try:
        if not resuming:
            _refuse_if_it_holds_a_run(run_dir)  # a run may have finished between the look and the lock
        lock.record_owner()
    except BaseException:
        lock.close()
        raise
    return lock
