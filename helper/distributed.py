"""torchrun-aware process-group set-up; a no-op in a single process.

torchrun exports RANK, LOCAL_RANK and WORLD_SIZE; the process group is initialised from that
environment (NCCL on GPUs, gloo on CPU). Global rank decides who writes; local rank picks the
GPU, so several machines work alike.

Upstream's own launcher (SimKD/distillers: ``--multiprocessing-distributed --dist-url URL``,
``mp.spawn`` of one process per visible GPU, ``--batch_size`` and ``--num_workers`` the totals
of the machine) is not reimplemented: outside torchrun those flags stop the run with the
equivalent torchrun command; under torchrun they are ignored.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from errors import UsageError

UPSTREAM_LAUNCHER_FLAGS = ("--multiprocessing-distributed", "--multiprocessing_distributed")
UPSTREAM_VALUE_FLAGS = ("--dist-url", "--dist_url")
UPSTREAM_TOTALS = ("--batch_size", "--batch-size", "--num_workers", "--num-workers")


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


def launch_rank() -> int:
    """The global rank torchrun gave this process (0 outside torchrun), read before any process group exists."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def note(message: str) -> None:
    """A one-line ``note:`` on stderr, from rank 0 only (every rank would print the same line)."""
    if launch_rank() == 0:
        print(f"note: {message}", file=sys.stderr, flush=True)


def listed_gpus(gpu_id: str) -> int:
    """How many GPUs a ``--gpu_id`` value such as ``"0,1,2,3"`` names."""
    return len([part for part in gpu_id.split(",") if part.strip()])


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


def average_batchnorm_statistics(module: nn.Module, frozen: nn.Module | None = None) -> None:
    """Replace every BatchNorm's running mean and variance by their mean over the processes.

    The Distiller is wrapped with ``forward_sync_buffers=False`` (memory banks are kept equal
    by all-gathers, and re-broadcasting them every step would cost their whole size), so
    without ``--sync_bn`` each rank's running statistics follow its own shard. Averaging them
    before an evaluation makes every rank evaluate, and rank 0 save, the same network; the
    mean is the running mean a single process would hold (its update is linear). BatchNorms
    inside ``frozen`` (the teacher, identical everywhere) are left alone. No-op in one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    skipped = set(frozen.modules()) if frozen is not None else set()
    statistics = [
        tensor
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer not in skipped
        for tensor in (layer.running_mean, layer.running_var)
        if tensor is not None
    ]
    if not statistics:
        return
    flat = torch.cat([tensor.reshape(-1).float() for tensor in statistics])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, mean in zip(statistics, flat.split([t.numel() for t in statistics])):
        tensor.copy_(mean.view_as(tensor))


def check_distributed_options(opt: argparse.Namespace, argv: Sequence[str] | None, script: str) -> None:
    """Refuse upstream's launcher flags outside torchrun, and ``--sync_bn`` where it cannot run.

    ``argv`` is the command line after the script (``None``: ``sys.argv[1:]``); ``script`` the
    name to put in the suggested command.
    """
    upstream = getattr(opt, "multiprocessing_distributed", False)
    if upstream and not launched_by_torchrun():
        command = torchrun_command(script, sys.argv[1:] if argv is None else argv, _visible_gpus(opt),
                                   opt.batch_size, opt.num_workers)
        raise UsageError("--multiprocessing-distributed is upstream's mp.spawn launcher; this repository runs "
                         "under torchrun, where --batch_size and --num_workers are per process: " + command)
    if upstream:
        note(f"--multiprocessing-distributed and --dist-url are ignored under torchrun; --batch_size "
             f"{opt.batch_size} is per process")
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if launched_by_torchrun() else 1
    # CUDA is asked only where the answer matters: asking starts CUDA in this process, which from
    # then on ignores CUDA_VISIBLE_DEVICES (helper/cli.py sets --gpu_id's before parsing anyway)
    if getattr(opt, "sync_bn", False) and world_size > 1 and not _runs_on_cuda(opt.device):
        raise UsageError("--sync_bn needs CUDA devices (SyncBatchNorm does not run on CPU); drop it on CPU")


def _runs_on_cuda(device: str) -> bool:
    """Whether ``--device`` ends on CUDA (``auto``: when a CUDA device is visible)."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def _visible_gpus(opt: argparse.Namespace) -> int:
    """The processes upstream would spawn: one per GPU of ``--gpu_id`` or per visible GPU (at least 1)."""
    if getattr(opt, "gpu_id", None):
        return listed_gpus(str(opt.gpu_id))
    return max(1, torch.cuda.device_count())


def torchrun_command(script: str, argv: Sequence[str], nproc: int, batch_size: int, num_workers: int) -> str:
    """The torchrun command line equivalent to upstream's ``--multiprocessing-distributed`` one.

    Drops ``--multiprocessing-distributed`` and ``--dist-url URL``, and gives upstream's
    per-machine totals ``batch_size`` and ``num_workers`` (as parsed, defaults included) per
    process, as upstream's workers divided them: ``B // nproc`` and ``ceil(W / nproc)``.
    """
    dropped = {*UPSTREAM_LAUNCHER_FLAGS, *UPSTREAM_VALUE_FLAGS, *UPSTREAM_TOTALS}
    words: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        flag, has_value, _ = token.partition("=")
        if flag not in dropped:
            words.append(token)
        elif flag not in UPSTREAM_LAUNCHER_FLAGS and not has_value:
            next(tokens, None)  # the flag's value
    words += ["--batch_size", str(max(1, batch_size // nproc)), "--num_workers", str(math.ceil(num_workers / nproc))]
    return shlex.join(["torchrun", f"--nproc_per_node={nproc}", script, *words])
