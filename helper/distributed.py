"""torchrun-aware process-group set-up; a no-op in a single process.

torchrun exports RANK, LOCAL_RANK and WORLD_SIZE; the process group is initialised from that
environment (NCCL on GPUs, gloo on CPU). Global rank decides who writes; local rank picks the
GPU, so several machines work alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_process_group(device_type: str) -> ProcessInfo:
    """Join the process group torchrun describes, or return a single-process description."""
    if not launched_by_torchrun():
        return ProcessInfo()
    info = ProcessInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
                       int(os.environ["WORLD_SIZE"]))
    if info.world_size > 1 and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_object(value: object, info: ProcessInfo) -> object:
    """Rank 0's ``value`` on every rank (identity in a single process)."""
    if not info.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
