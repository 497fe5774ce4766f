"""The entry scripts' shell: parse, run, and turn every expected failure into one line.

Exit status: 0 done; 2 a user mistake (nothing written); 3 a non-finite loss (the last good
checkpoint is kept); 4 a failed checkpoint write; 143 interrupted by SIGTERM/SIGINT after
writing what was saved so far (resume with ``--resume auto``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE, EXIT_INTERRUPTED = 2, 3, 4, 143


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def main(parse: Callable[[Sequence[str] | None], argparse.Namespace], kind: str,
         argv: Sequence[str] | None = None) -> int:
    """Run train_teacher.py (``kind="teacher"``) or train_student.py (``kind="student"``)."""
    from helper.driver import Interrupted, run
    from helper.errors import UsageError
    from helper.loops import NonFiniteLoss

    try:
        opt = parse(argv)
        if opt.gpu_id is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(opt.gpu_id)
        run(opt, kind)
    except UsageError as error:
        return _fail(str(error), EXIT_USAGE)
    except NonFiniteLoss as error:
        return _fail(f"{error}; stopped, the last good checkpoint is kept", EXIT_NONFINITE)
    except Interrupted as error:
        return _fail(f"interrupted during {error}; the last complete epoch is saved, "
                     "continue with --resume auto", EXIT_INTERRUPTED)
    except OSError as error:
        return _fail(str(error), EXIT_WRITE)
    return 0
