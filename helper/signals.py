"""Stopping a run cleanly on SIGTERM/SIGINT (a Slurm preemption, a Ctrl-C) after its current step."""

from __future__ import annotations

import signal
from typing import Any

import torch

from helper.distributed import ProcessInfo, all_reduce_sum


class StopFlag:
    """Set by SIGTERM/SIGINT; a second signal exits at once.

    Under torchrun every process must stop after the same step, so the flag is agreed on
    (an all-reduce) every ``agree_every`` steps instead of read locally after each step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, process: ProcessInfo, device: torch.device, agree_every: int) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}
        self.process, self.device, self.agree_every = process, device, agree_every
        self.calls = 0

    def __call__(self) -> bool:
        if not self.process.distributed:
            return self.requested
        self.calls += 1
        if self.calls % self.agree_every:
            return False
        flag = all_reduce_sum(torch.tensor([float(self.requested)], device=self.device))
        return bool(flag.item() > 0)

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise SystemExit(128 + signum)
            self.requested = True

        for signum in self.SIGNALS:
            self.previous[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous.clear()
