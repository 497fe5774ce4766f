"""From validated options to the parts of a run: its data and the task that trains on it.

This is the one place where the parsed command line is turned into explicit arguments for
``dataset.build`` and the Distillers. The driver and ``scripts/benchmark.py`` both build
through it, so the benchmark times exactly what a run runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import dataset
import distiller_zoo
from dataset.batch import DataNeeds
from distiller_zoo.base import DistillSetup, Weights
from distiller_zoo.task import Supervised, TrainingTask
from helper.distributed import ProcessInfo
from models import build_model

TeacherFactory = Callable[[int, int], nn.Module]  # (num_classes, image_size) -> the teacher, sized for the data


@dataclass
class Components:
    """What a run trains: its loaders and its task (a Supervised network or a Distiller)."""

    data: dataset.DataBundle
    task: TrainingTask


def student_name(opt: argparse.Namespace) -> str:
    """The network a run trains: ``--model`` of train_teacher.py, ``--model_s`` of train_student.py."""
    return vars(opt).get("model_s") or opt.model


def data_needs(opt: argparse.Namespace, distils: bool) -> DataNeeds:
    """What the method asks of the training loader (nothing for a teacher run)."""
    return distiller_zoo.registry.data_needs(opt.distill, vars(opt)) if distils else DataNeeds()


def build_data(opt: argparse.Namespace, needs: DataNeeds, device: torch.device,
               process: ProcessInfo) -> dataset.DataBundle:
    """The loaders of ``--dataset`` for this process."""
    return dataset.build(opt.dataset, opt.data_root, opt.batch_size, needs, device, seed=opt.seed,
                         num_workers=opt.num_workers, loader=opt.loader, dali=opt.dali, val_split=opt.val_split,
                         bad_images=opt.bad_images, rank=process.rank, world_size=process.world_size)


def build_task(opt: argparse.Namespace, data: dataset.DataBundle, teacher: nn.Module | None,
               teacher_name: str | None = None) -> TrainingTask:
    """The student sized for ``data`` and, with a teacher, the Distiller of ``--distill`` around both."""
    student = build_model(student_name(opt), data.num_classes, data.image_size)
    if teacher is None:
        return Supervised(student)
    setup = DistillSetup(image_size=data.image_size, num_train=data.num_train, batch_size=opt.batch_size,
                         learning_rate=opt.learning_rate, weights=Weights(opt.gamma, opt.alpha, opt.beta),
                         kd_T=opt.kd_T, student_name=opt.model_s, teacher_name=teacher_name or "teacher")
    return distiller_zoo.build(opt.distill, student, teacher, setup, vars(opt))


def prepare_task(task: TrainingTask, device: torch.device, channels_last: bool, compile_networks: bool,
                 sync_bn: bool = False) -> None:
    """Put a task on the run's device and memory layout, and compile its networks if asked."""
    if sync_bn:
        task.student = nn.SyncBatchNorm.convert_sync_batchnorm(task.student)
    task.to(device)
    if channels_last:
        task.to(memory_format=torch.channels_last)
    if compile_networks:
        task.student.compile()
        if task.teacher is not None:
            task.teacher.compile()


def build_components(opt: argparse.Namespace, device: torch.device, process: ProcessInfo,
                     teacher_factory: TeacherFactory | None = None, teacher_name: str | None = None,
                     sync_bn: bool = False) -> Components:
    """Data, then (for a student run) the teacher from ``teacher_factory``, then the task, placed on ``device``."""
    data = build_data(opt, data_needs(opt, teacher_factory is not None), device, process)
    teacher = None if teacher_factory is None else teacher_factory(data.num_classes, data.image_size)
    task = build_task(opt, data, teacher, teacher_name)
    prepare_task(task, device, opt.channels_last, opt.compile, sync_bn)
    return Components(data, task)
