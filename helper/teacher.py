"""The teacher of a student run: its checkpoint read and checked, then its network built.

A teacher comes from a file (``--path_t``: any format helper/checkpoint.py reads, for a registry
or library network), or, with ``--pretrained_t``, from the library's own weights of ``--model_t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from errors import UsageError
from helper import checkpoint as ckpt
from helper.options import resolve_model
from models import build_model
from models.library import weights_module


@dataclass(frozen=True)
class TeacherFile:
    """A teacher whose architecture is known (not yet a network): a checkpoint read from ``path``,
    or, when ``pretrained``, the library's weights (``path`` None, no checkpoint)."""

    path: Path | None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    arch: str = ""
    pretrained: bool = False


def read_teacher(path: str | Path | None, model_t: str | None, dataset: str, pretrained: bool = False) -> TeacherFile:
    """Read ``--path_t`` and settle its architecture (the checkpoint's record, ``--model_t``, or the path).

    With ``pretrained`` there is no file: the teacher is ``--model_t`` with its library's weights.
    """
    if pretrained:
        if model_t is None:
            raise UsageError("--pretrained_t needs --model_t, the teacher whose library weights to load")
        return TeacherFile(None, {}, resolve_model(model_t, dataset, "--model_t"), pretrained=True)
    checkpoint = ckpt.load_checkpoint(path)
    ckpt.check_teacher(checkpoint, path, dataset)
    arch = resolve_model(ckpt.teacher_arch(checkpoint, path, model_t), dataset, "teacher architecture")
    return TeacherFile(Path(path), checkpoint, arch)


def build_teacher(teacher: TeacherFile, num_classes: int, image_size: int | None = None,
                  dataset: str = "this data set") -> nn.Module:
    """The teacher network with its weights, for a data set of ``num_classes`` classes of ``image_size`` images."""
    recorded = teacher.checkpoint.get("num_classes")
    if recorded is not None and int(recorded) != num_classes:
        raise UsageError(f"teacher {teacher.path} was trained for {recorded} classes but --dataset "
                         f"{dataset} has {num_classes}; use a teacher trained on this data set")
    network = build_model(teacher.arch, num_classes, image_size, pretrained=teacher.pretrained)
    if not teacher.pretrained:
        ckpt.load_weights(weights_module(network), ckpt.model_state(teacher.checkpoint), teacher.path, teacher.arch)
    return network
