"""The run driver: from validated options to a finished run folder.

It builds the run's components (``helper.components``), runs the stages the task declares
(an optional pre-training stage, then the main stage), evaluates, checkpoints and logs. It
knows no method by name: everything method-specific comes from the Distiller.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from errors import UsageError
from helper import checkpoint as ckpt
from helper import run_names
from helper.components import build_components, student_name
from helper.distributed import (
    ProcessInfo,
    average_batchnorm_statistics,
    destroy_process_group,
    init_process_group,
)
from helper.logger import RunLogger
from helper.loops import EpochProgress, StepConfig, train_one_epoch, validate
from helper.optim import make_optimizer, make_scheduler, make_sgd
from helper.run_folder import check_writable, claim_run_folder
from helper.seeding import rng_state, seed_everything, set_rng_state
from helper.signals import StopFlag
from helper.teacher import build_teacher, read_teacher
from models.spec import spec_component

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Interrupted(Exception):
    """SIGTERM/SIGINT ended the run after its current step; ``latest`` holds its state."""


@dataclass
class RunState:
    """Where a run is: which stage, the last finished epoch of it, and the best accuracy so far."""

    stage: str = "main"
    epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def run_name(opt: argparse.Namespace, teacher_arch: str | None) -> str:
    """The run folder name (RepDistiller/SimKD naming) of a teacher run, or of a student run of ``teacher_arch``."""
    if teacher_arch is None:
        return run_names.teacher_run_name(opt.model, opt.dataset, opt.trial)
    method = opt.distill if opt.optimizer == "sgd" else f"{opt.distill}+{opt.optimizer}"  # DOT runs apart
    return run_names.student_run_name(opt.model_s, teacher_arch, opt.dataset, method, opt.gamma, opt.alpha,
                                      opt.beta, opt.trial)


class Run:
    """One training run (teacher or student) from options to its folder of results."""

    def __init__(self, opt: argparse.Namespace, kind: str):
        self.opt, self.kind = opt, kind
        self.device = select_device(opt.device)
        if opt.amp == "fp16" and self.device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device; on CPU use --amp bf16")
        self.process: ProcessInfo = init_process_group(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.process.local_rank)
        seed_everything(opt.seed + self.process.rank, opt.deterministic)

        save_dir = Path(opt.save_dir).expanduser()
        check_writable(save_dir)
        run_kind = run_names.VANILLA if kind == "teacher" else run_names.DISTILLED
        self.student_name = student_name(opt)
        teacher_file = (read_teacher(opt.path_t, opt.model_t, opt.dataset, opt.pretrained_t) if kind == "student"
                        else None)
        self.teacher_arch = None if teacher_file is None else teacher_file.arch
        self.name = run_name(opt, self.teacher_arch)
        self.run_dir = run_names.run_dir(save_dir, run_kind, self.name)
        self.tensorboard_dir = run_names.tensorboard_dir(save_dir, run_kind, self.name)
        for folder in (self.run_dir, self.tensorboard_dir):
            check_writable(folder)

        factory = None if teacher_file is None else partial(build_teacher, teacher_file, dataset=opt.dataset)
        components = build_components(opt, self.device, self.process, factory, self.teacher_arch,
                                      sync_bn=opt.sync_bn and self.process.distributed)
        self.data, self.task = components.data, components.task
        self.model: nn.Module = self.task
        if self.process.distributed:
            self.model = DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False, find_unused_parameters=True)  # buffers: rank 0's at start, then kept equal

        self.config = StepConfig(self.device, AMP_DTYPES[opt.amp], opt.channels_last, opt.print_freq,
                                 self.process.is_main)
        self.logger = RunLogger(self.run_dir, self.tensorboard_dir, enabled=self.process.is_main)
        self.stop = StopFlag(self.process, self.device, agree_every=min(opt.print_freq, 20))
        self.state = RunState()
        self.init_spec = self.task.init_stage
        self.optimizer, self.scheduler = self._main_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if opt.amp == "fp16" else None
        self.init_optimizer = None
        self.pending: EpochProgress | None = None
        if self.init_spec is not None:
            self.init_optimizer = make_sgd(self.task.init_parameters(), self.init_spec.learning_rate, opt.momentum,
                                           opt.weight_decay)
            self.state.stage = "init"
        if opt.resume:
            self._resume(self.init_optimizer)
        self.lock = claim_run_folder(self.run_dir, resuming=bool(opt.resume)) if self.process.is_main else None

    # ----------------------------------------------------------------------------------------

    def _main_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = self.opt
        optimizer = make_optimizer(opt.optimizer, self.task.main_parameters(), opt.learning_rate, opt.momentum,
                                   opt.weight_decay, opt.dot_delta, opt.amp)
        return optimizer, make_scheduler(optimizer, opt.lr_decay_epochs, opt.lr_decay_rate)

    def _checkpoint_state(self, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                          partial: EpochProgress | None = None) -> dict[str, Any]:
        return {
            "model": self.task.student.state_dict(),
            "distiller": self.task.trainable_state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "stage": self.state.stage,
            "epoch": self.state.epoch,
            "partial": None if partial is None else {"iteration": partial.iteration,
                                                     "meters": {k: list(v) for k, v in partial.meters.items()}},
            "best_acc": self.state.best_acc,
            "best_epoch": self.state.best_epoch,
            "history": self.state.history,
            "rng": rng_state(),
            "arch": self.student_name,
            "num_classes": self.data.num_classes,
            "dataset": self.opt.dataset,
            "method": vars(self.opt).get("distill"),
            "teacher_arch": self.teacher_arch,
            "run_name": self.name,
            "args": self._recorded_args(),
        }

    def _save(self, filename: str, state: dict[str, Any]) -> None:
        if self.process.is_main:
            ckpt.save_atomic(state, self.run_dir / filename)

    def _resume(self, init_optimizer: torch.optim.Optimizer | None) -> None:
        path = self.opt.resume
        if path == "auto":
            path = self.run_dir / "latest.pth"
            if not path.is_file():
                self.logger.info(f"no checkpoint in {self.run_dir}; starting from scratch")
                return
        state = ckpt.load_checkpoint(path)
        if state.get("run_name") not in (None, self.name):
            raise UsageError(f"--resume {path} belongs to run {state['run_name']}, not {self.name}; "
                             "point --resume at this run's checkpoint")
        if "optimizer" not in state or "stage" not in state:
            raise UsageError(f"--resume {path} holds weights only, not a resumable run state")
        ckpt.check_resume_flags(state.get("args"), self._recorded_args(), path)
        self.task.student.load_state_dict(state["model"])
        self.task.load_trainable_state_dict(state["distiller"])
        self.state = RunState(state["stage"], state["epoch"], state["best_acc"], state["best_epoch"],
                              list(state["history"]))
        if state["stage"] == "init":
            init_optimizer.load_state_dict(state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("partial"):
            partial = state["partial"]
            self.pending = EpochProgress(partial["iteration"], {k: tuple(v) for k, v in partial["meters"].items()})
        set_rng_state(state["rng"])
        where = f", {self.pending.iteration} iterations into the next" if self.pending else ""
        self.logger.info(f"resumed from {path}: stage {state['stage']}, epoch {state['epoch']} done{where}")

    def _evaluate(self, loader) -> dict[str, float]:
        average_batchnorm_statistics(self.task, frozen=self.task.teacher)  # torchrun: one network
        self.task.eval()
        return validate(self.task.predict, loader, self.config)

    def _train_epoch(self, optimizer, scheduler, epoch: int, label: str) -> dict[str, float]:
        """One epoch; on SIGTERM/SIGINT, save where it stopped as ``latest`` and raise Interrupted."""
        self.data.train.set_epoch(epoch if label == "train" else -epoch)
        self.task.set_epoch(epoch)
        resume_from, self.pending = self.pending, None
        record, stopped = train_one_epoch(self.model, self.task.loss_weights, self.data.train, optimizer,
                                          self.config, epoch, label, self.scaler, self.stop, resume_from)
        if stopped is not None:
            self._save("latest.pth", self._checkpoint_state(optimizer, scheduler, stopped))
            raise Interrupted(f"{label} epoch {epoch}, iteration {stopped.iteration}")
        return record

    def _record(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        self.logger.epoch(record, step=record["epoch"])

    # ----------------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        opt = self.opt
        start = time.perf_counter()
        if self.state.stage == "main" and self.state.epoch >= opt.epochs:
            self.logger.info(f"run {self.name} is already finished ({opt.epochs} epochs); nothing to do")
            return {"run_name": self.name, "finished": True}
        self.stop.install()
        self.logger.info(f"run folder: {self.run_dir}")
        self.logger.rewrite(self.state.history)  # a fresh run starts its metrics anew, a resumed one keeps its own
        teacher_acc = None
        if self.kind == "student" and not opt.skip_validation:
            teacher_acc = validate(self.task.teacher, self.data.test, self.config)["acc1"]
            self.logger.info(f"teacher accuracy: {teacher_acc:.2f}")

        if self.state.stage == "init":
            self._run_init_stage(self.init_optimizer)
        self._run_main_stage()
        return self._summary(time.perf_counter() - start, teacher_acc)

    def _run_init_stage(self, optimizer: torch.optim.Optimizer) -> None:
        spec = self.init_spec
        self.task.set_stage("init")
        self.logger.info(f"init stage: {spec.epochs} epochs at lr {spec.learning_rate} on {', '.join(spec.terms)}")
        for epoch in range(self.state.epoch + 1, spec.epochs + 1):
            train = self._train_epoch(optimizer, None, epoch, "init")
            self.state.epoch = epoch
            self._record({"stage": "init", "epoch": epoch, "init_train_loss": train.pop("loss"),
                          **{f"init_train_{k}" if k != "images_per_second" else k: v for k, v in train.items()}})
            self._save("latest.pth", self._checkpoint_state(optimizer, None))
        self.state = RunState("main", 0, 0.0, 0, self.state.history)
        self.task.set_stage("main")

    def _run_main_stage(self) -> None:
        opt = self.opt
        for epoch in range(self.state.epoch + 1, opt.epochs + 1):
            lr = self.optimizer.param_groups[0]["lr"]
            train = self._train_epoch(self.optimizer, self.scheduler, epoch, "train")
            self.scheduler.step()
            test = self._evaluate(self.data.test)
            record = {"stage": "main", "epoch": epoch, "lr": lr,
                      **{f"train_{k}" if k != "images_per_second" else k: v for k, v in train.items()},
                      "test_acc": test["acc1"], "test_acc_top5": test["acc5"], "test_loss": test["loss"]}
            selection = test["acc1"]
            if self.data.val is not None:
                val = self._evaluate(self.data.val)
                record.update(val_acc=val["acc1"], val_acc_top5=val["acc5"], val_loss=val["loss"])
                selection = val["acc1"]
            self.state.epoch = epoch
            improved = selection > self.state.best_acc or self.state.best_epoch == 0
            if improved:
                self.state.best_acc, self.state.best_epoch = selection, epoch
            self._record(record)
            self.logger.info(f"epoch {epoch}: train_loss {train['loss']:.4f} train_acc {train['acc1']:.2f} "
                             f"test_acc {test['acc1']:.2f} ({train['images_per_second']:.0f} img/s)")
            state = self._checkpoint_state(self.optimizer, self.scheduler)
            if improved:
                self._save(f"{spec_component(self.student_name)}_best.pth", {**state, "accuracy": selection})
            if epoch % opt.save_freq == 0:
                self._save(f"ckpt_epoch_{epoch}.pth", {**state, "accuracy": test["acc1"]})
            if epoch == opt.epochs:
                self._save(f"{spec_component(self.student_name)}_last.pth", {**state, "accuracy": test["acc1"]})
            self._save("latest.pth", state)

    def _recorded_args(self) -> dict[str, Any]:
        """The run's flags as it ran them (the teacher architecture resolved), for summaries and resume checks."""
        args = dict(vars(self.opt))
        if self.teacher_arch is not None:
            args["model_t"] = self.teacher_arch
        return args

    def _summary(self, wall_time: float, teacher_acc: float | None = None) -> dict[str, Any]:
        history = [h for h in self.state.history if h["stage"] == "main"]
        last = history[-1] if history else {}
        best = next((h for h in history if h["epoch"] == self.state.best_epoch), {})
        summary = {
            "run_name": self.name,
            "finished": self.state.stage == "main" and self.state.epoch >= self.opt.epochs,
            "epochs": len(history),
            "selection": "val_acc" if self.data.val is not None else "test_acc",
            "best_epoch": self.state.best_epoch,
            "best_acc": best.get("test_acc"),
            "best_acc_top5": best.get("test_acc_top5"),
            "last_acc": last.get("test_acc"),
            "last_acc_top5": last.get("test_acc_top5"),
            "best_val_acc": best.get("val_acc"),
            "teacher_acc": teacher_acc,
            "wall_time_seconds": wall_time,
            "images_per_second": (sum(h["images_per_second"] for h in history) / len(history)) if history else None,
            "args": self._recorded_args(),
        }
        self.logger.summary(summary)
        return summary

    def close(self) -> None:
        self.stop.uninstall()
        self.logger.close()
        if self.lock is not None:
            self.lock.close()
        destroy_process_group()


def run(opt: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Train per ``opt``; ``kind`` is ``"teacher"`` or ``"student"``. Returns the summary."""
    run_ = Run(opt, kind)
    try:
        return run_.execute()
    finally:
        run_.close()
