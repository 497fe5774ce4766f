"""The entry scripts' shell: parse, run, and turn every expected failure into one line.

Exit status: 0 done; 2 a user mistake (nothing written); 3 a non-finite loss (the last good
checkpoint is kept); 4 a failed checkpoint write; 143 interrupted by SIGTERM/SIGINT after
writing what was saved so far (resume with ``--resume auto``).

``--gpu_id`` works by setting ``CUDA_VISIBLE_DEVICES``, which CUDA reads once, when it starts
in the process; so the variable is set from a first parse that asks CUDA nothing, before the
full validation (which may ask whether CUDA is available) and before the run.

Under torchrun every process validates the same command line, so a mistake is found by all of
them at once: rank 0 prints the line, the others stay silent (see :func:`_usage_error`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from errors import UsageError
from helper.distributed import launch_rank, launched_by_torchrun, listed_gpus, note

EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE, EXIT_INTERRUPTED = 2, 3, 4, 143
# How long a rank other than 0 waits, on a usage error, for rank 0 to report it and torchrun to
# end this process: the ranks reach the same check within a second or two of each other.
RANK_REPORT_GRACE_S = 10.0


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def _usage_error(message: str) -> int:
    """Report a user mistake once, from rank 0, and return the usage exit status.

    A rank other than 0 does not print at once: rank 0 finds the same mistake, prints it and
    exits, and torchrun then stops the other ranks. Exiting silently at once instead would let
    torchrun stop rank 0 before it printed anything, when rank 0 runs a little behind. So those
    ranks wait :data:`RANK_REPORT_GRACE_S` first; a mistake that only they see (a file missing on
    one machine of several) is still reported, after the wait, naming the rank.
    """
    rank = launch_rank()
    if rank == 0:
        return _fail(message, EXIT_USAGE)
    time.sleep(RANK_REPORT_GRACE_S)
    return _fail(f"(rank {rank}) {message}", EXIT_USAGE)


def select_gpus(argv: Sequence[str], kind: str) -> None:
    """Set ``CUDA_VISIBLE_DEVICES`` from ``--gpu_id`` in ``argv``, without asking CUDA anything.

    A tolerant first parse of the same parser (unknown flags are left for the full parse, which
    reports every mistake), so ``--gpu_id`` is read exactly as the full parse reads it.
    """
    from helper.options import student_parser, teacher_parser

    parser = teacher_parser() if kind == "teacher" else student_parser()
    try:
        known, _ = parser.parse_known_args(list(argv))
    except UsageError:
        return
    if known.gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(known.gpu_id)


def check_gpu_id(gpu_id: str | None, device: str) -> None:
    """Say when ``--gpu_id`` cannot take effect instead of ignoring it silently.

    With ``--device cpu`` it is ignored (a note). When it leaves no CUDA device visible (no GPU
    of that number, or no GPU at all), ``--device auto`` goes on on the CPU with a note, and
    ``--device cuda`` is a usage error. When it names more GPUs than are visible (CUDA stops at
    the first number it does not have), a note says how many are used. Called after
    :func:`select_gpus`, so CUDA starts with the variable already set.
    """
    if gpu_id is None:
        return
    if device == "cpu":
        note(f"--gpu_id {gpu_id} is ignored with --device cpu")
        return
    import torch

    visible, listed = torch.cuda.device_count(), listed_gpus(gpu_id)
    if visible == 0:
        reason = f"no CUDA device is visible with CUDA_VISIBLE_DEVICES={gpu_id} (no GPU of that number, or no GPU)"
        if device == "cuda":
            raise UsageError(f"--device cuda --gpu_id {gpu_id}: {reason}; give a GPU number that nvidia-smi lists, "
                             "or use --device cpu")
        note(f"--gpu_id {gpu_id} is ignored: {reason}; running on the CPU")
    elif visible < listed:
        note(f"--gpu_id {gpu_id} names {listed} GPUs but only the first {visible} are visible (CUDA stops at the "
             "first number it does not have); the run uses those")


def main(parse: Callable[[Sequence[str] | None], argparse.Namespace | list[argparse.Namespace]], kind: str,
         argv: Sequence[str] | None = None) -> int:
    """Run train_teacher.py (``kind="teacher"``) or train_student.py (``kind="student"``).

    ``parse`` gives one run's options, or a pack's (a list, one per member: ``--distill A,B``).
    """
    from helper.driver import Interrupted, run
    from helper.loops import NonFiniteLoss

    try:
        select_gpus(sys.argv[1:] if argv is None else argv, kind)
        opts = parse(argv)
        first = opts[0] if isinstance(opts, list) else opts
        check_gpu_id(first.gpu_id, first.device)
        run(opts, kind)
    except UsageError as error:
        return _usage_error(str(error))
    except NonFiniteLoss as error:
        return _fail(f"{error}; stopped, the last good checkpoint is kept", EXIT_NONFINITE)
    except Interrupted as error:
        return _fail(f"interrupted during {error}; the last complete epoch is saved, "
                     "continue with --resume auto", EXIT_INTERRUPTED)
    except OSError as error:
        return _fail(str(error), EXIT_WRITE)
    return 0


def exit_process(status: int) -> None:
    """Leave the process with ``status`` once :func:`main` has returned.

    Under torchrun the interpreter's own teardown is skipped: by then every checkpoint, log and
    event file is closed and the process group destroyed, yet the C++ threads of the gloo
    transport can still be torn down in the wrong order at exit and abort the process
    ("terminate called without an active exception", SIGABRT), turning a finished run into a
    failed launch. A single process exits normally.
    """
    if not launched_by_torchrun():
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
