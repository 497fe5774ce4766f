"""The teacher of a student run: its checkpoint read and checked, then its network built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from errors import UsageError
from helper import checkpoint as ckpt
from helper.options import resolve_model
from models import model_dict


@dataclass(frozen=True)
class TeacherFile:
    """A teacher checkpoint that was read and whose architecture is known (not yet a network)."""

    path: Path
    checkpoint: dict[str, Any]
    arch: str


def read_teacher(path: str | Path, model_t: str | None, dataset: str) -> TeacherFile:
    """Read ``--path_t`` and settle its architecture (the checkpoint's record, ``--model_t``, or the path)."""
    checkpoint = ckpt.load_checkpoint(path)
    ckpt.check_teacher(checkpoint, path, dataset)
    arch = resolve_model(ckpt.teacher_arch(checkpoint, path, model_t), dataset, "teacher architecture")
    return TeacherFile(Path(path), checkpoint, arch)


def build_teacher(teacher: TeacherFile, num_classes: int, dataset: str) -> nn.Module:
    """The teacher network with its weights, for a data set of ``num_classes`` classes."""
    recorded = teacher.checkpoint.get("num_classes")
    if recorded is not None and int(recorded) != num_classes:
        raise UsageError(f"teacher {teacher.path} was trained for {recorded} classes but --dataset "
                         f"{dataset} has {num_classes}; use a teacher trained on this data set")
    network = model_dict[teacher.arch](num_classes=num_classes)
    ckpt.load_weights(network, ckpt.model_state(teacher.checkpoint), teacher.path, teacher.arch)
    return network
