"""A run: from its validated options and built task to a finished run folder.

A :class:`Run` holds what is one run's own (its task, optimizer, schedule, state, logger and
folder) and does its epoch bookkeeping: the stages the task declares (an optional
pre-training stage, then the main stage), evaluation, checkpoints and logs. The epochs
themselves are driven by :class:`~helper.pack.Pack`, which feeds one data stream to one or
more runs. Nothing here knows a method by name: everything method-specific comes from the
task.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distiller_zoo.task import TrainingTask
from errors import UsageError
from helper import checkpoint as ckpt
from helper import run_names
from helper.components import student_name
from helper.distributed import ProcessInfo, average_batchnorm_statistics
from helper.logger import RunLogger
from helper.loops import EpochProgress, EpochTrainer, NonFiniteLoss, StepConfig, validate
from helper.optim import make_optimizer, make_scheduler, make_sgd
from helper.run_folder import claim_run_folder
from helper.seeding import RandomStreams
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


@dataclass
class Shared:
    """What the runs of one process share: the device, the process group, the data and the step settings.

    A pack's members share the teacher too: it is each member's ``task.teacher``, one network.
    """

    device: torch.device
    process: ProcessInfo
    data: Any  # dataset.DataBundle
    config: StepConfig
    teacher_arch: str | None
    teacher_acc: float | None = None


class Run:
    """One training run (teacher or student): its task, optimizer, schedule, state and folder.

    A :class:`~helper.pack.Pack` builds and drives its runs (a solo run is a pack of one): it
    feeds every epoch's batches to :meth:`begin_epoch`'s trainer and calls :meth:`end_epoch`.
    """

    def __init__(self, opt: argparse.Namespace, kind: str, task: TrainingTask, shared: Shared,
                 name: str, save_dir: Path):
        self.opt, self.kind, self.task, self.shared = opt, kind, task, shared
        self.student_name = student_name(opt)
        self.teacher_arch = shared.teacher_arch
        self.data, self.device, self.process = shared.data, shared.device, shared.process
        self.name = name
        run_kind = run_names.VANILLA if kind == "teacher" else run_names.DISTILLED
        self.run_dir = run_names.run_dir(save_dir, run_kind, name)
        self.tensorboard_dir = run_names.tensorboard_dir(save_dir, run_kind, name)
        self.streams = RandomStreams()  # the global random state right after this run's task was built
        self.model: nn.Module = task
        if self.process.distributed:
            self.model = DistributedDataParallel(
                task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False, find_unused_parameters=True)  # buffers: rank 0's at start, then kept equal
        self.config = shared.config
        self.logger = RunLogger(self.run_dir, self.tensorboard_dir, enabled=self.process.is_main)
        self.state = RunState()
        self.init_spec = task.init_stage
        self.optimizer, self.scheduler = self._main_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if opt.amp == "fp16" else None
        self.init_optimizer = None
        self.pending: EpochProgress | None = None
        self.failure: NonFiniteLoss | None = None  # why the run stopped early, if it did
        self.trainer: EpochTrainer | None = None
        self.lock = None
        if self.init_spec is not None:
            self.init_optimizer = make_sgd(task.init_parameters(), self.init_spec.learning_rate, opt.momentum,
                                           opt.weight_decay)
            self.state.stage = "init"
        if opt.resume:
            self._resume(self.init_optimizer)

    def claim_folder(self) -> None:
        """Claim the run folder (the run's first write), once every run of the pack has been built."""
        if self.process.is_main:
            self.lock = claim_run_folder(self.run_dir, resuming=bool(self.opt.resume))

    # ----------------------------------------------------------------------------------------

    def _main_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = self.opt
        optimizer = make_optimizer(opt.optimizer, self.task.main_parameters(), opt.learning_rate, opt.momentum,
                                   opt.weight_decay, opt.dot_delta, opt.amp)
        return optimizer, make_scheduler(optimizer, opt.lr_decay_epochs, opt.lr_decay_rate)

    @property
    def _stage_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        return (self.init_optimizer, None) if self.state.stage == "init" else (self.optimizer, self.scheduler)

    def _checkpoint_state(self, partial: EpochProgress | None = None) -> dict[str, Any]:
        optimizer, scheduler = self._stage_optimizer
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
            "rng": self.streams.state,
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
        self.streams = RandomStreams(state["rng"])
        where = f", {self.pending.iteration} iterations into the next" if self.pending else ""
        self.logger.info(f"resumed from {path}: stage {state['stage']}, epoch {state['epoch']} done{where}")

    def _evaluate(self, loader) -> dict[str, float]:
        average_batchnorm_statistics(self.task, frozen=self.task.teacher)  # torchrun: one network
        self.task.eval()
        return validate(self.task.predict, loader, self.config)

    def _record(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        self.logger.epoch(record, step=record["epoch"])

    # ----------------------------------------------------------------------------------------
    # What the pack calls.

    @property
    def finished(self) -> bool:
        return self.state.stage == "main" and self.state.epoch >= self.opt.epochs

    def start(self) -> None:
        """Open the run: its folder line, its metrics as far as they go, its stage."""
        self.logger.info(f"run folder: {self.run_dir}")
        self.logger.rewrite(self.state.history)  # a fresh run starts its metrics anew, a resumed one keeps its own
        if self.state.stage == "init":
            self.task.set_stage("init")
            spec = self.init_spec
            self.logger.info(f"init stage: {spec.epochs} epochs at lr {spec.learning_rate} on "
                             f"{', '.join(spec.terms)}")

    def next_epoch(self) -> tuple[int, int] | None:
        """(0 for the init stage or 1 for the main stage, epoch) the run trains next; None when it is done."""
        if self.failure is not None:
            return None
        if self.state.stage == "init":
            if self.state.epoch < self.init_spec.epochs:
                return 0, self.state.epoch + 1
            self.state = RunState("main", 0, 0.0, 0, self.state.history)
            self.task.set_stage("main")
        return None if self.finished else (1, self.state.epoch + 1)

    def begin_epoch(self, epoch: int, num_batches: int, label: str,
                    full_batches: int | None) -> EpochTrainer:
        """The trainer of this run's next epoch (``label`` "train" or "init")."""
        self.task.set_epoch(epoch)
        optimizer, _ = self._stage_optimizer
        resume_from, self.pending = self.pending, None
        self.epoch_lr = optimizer.param_groups[0]["lr"]
        self.trainer = EpochTrainer(self.model, self.task.loss_weights, optimizer, self.config, epoch, num_batches,
                                    label, self.scaler, resume_from, full_batches, self.streams)
        return self.trainer

    def save_interrupted(self) -> None:
        """SIGTERM/SIGINT mid-epoch: save where this run's epoch stopped as ``latest``."""
        self._save("latest.pth", self._checkpoint_state(self.trainer.interrupted()))

    def fail(self, error: NonFiniteLoss) -> None:
        """Stop this run alone: its last good checkpoint stays, its summary says why."""
        self.failure = error
        self.trainer.progress.close()
        self.logger.info(f"stopped: {error}; the last good checkpoint is kept")

    def end_epoch(self, elapsed: float) -> None:
        """Finish the epoch the trainer ran: record it, evaluate, checkpoint."""
        epoch = self.trainer.epoch
        try:
            train = self.trainer.finish(elapsed)
        except NonFiniteLoss as error:
            self.fail(error)
            return
        if self.state.stage == "init":
            self.state.epoch = epoch
            self._record({"stage": "init", "epoch": epoch, "init_train_loss": train.pop("loss"),
                          **{f"init_train_{k}" if k != "images_per_second" else k: v for k, v in train.items()}})
            self._save("latest.pth", self._checkpoint_state())
            return
        self.scheduler.step()
        test = self._evaluate(self.data.test)
        record = {"stage": "main", "epoch": epoch, "lr": self.epoch_lr,
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
        state = self._checkpoint_state()
        if improved:
            self._save(f"{spec_component(self.student_name)}_best.pth", {**state, "accuracy": selection})
        if epoch % self.opt.save_freq == 0:
            self._save(f"ckpt_epoch_{epoch}.pth", {**state, "accuracy": test["acc1"]})
        if epoch == self.opt.epochs:
            self._save(f"{spec_component(self.student_name)}_last.pth", {**state, "accuracy": test["acc1"]})
        self._save("latest.pth", state)

    def _recorded_args(self) -> dict[str, Any]:
        """The run's flags as it ran them (the teacher architecture resolved), for summaries and resume checks."""
        args = dict(vars(self.opt))
        if self.teacher_arch is not None:
            args["model_t"] = self.teacher_arch
        return args

    def summary(self, wall_time: float) -> dict[str, Any]:
        """Write and return ``summary.json``: the run's best and last accuracies, or why it stopped."""
        history = [h for h in self.state.history if h["stage"] == "main"]
        last = history[-1] if history else {}
        best = next((h for h in history if h["epoch"] == self.state.best_epoch), {})
        summary = {
            "run_name": self.name,
            "finished": self.finished,
            "epochs": len(history),
            "selection": "val_acc" if self.data.val is not None else "test_acc",
            "best_epoch": self.state.best_epoch,
            "best_acc": best.get("test_acc"),
            "best_acc_top5": best.get("test_acc_top5"),
            "last_acc": last.get("test_acc"),
            "last_acc_top5": last.get("test_acc_top5"),
            "best_val_acc": best.get("val_acc"),
            "teacher_acc": self.shared.teacher_acc,
            "wall_time_seconds": wall_time,
            "images_per_second": (sum(h["images_per_second"] for h in history) / len(history)) if history else None,
            **({"stopped": str(self.failure)} if self.failure is not None else {}),
            "args": self._recorded_args(),
        }
        self.logger.summary(summary)
        return summary

    def close(self) -> None:
        self.logger.close()
        if self.lock is not None:
            self.lock.close()


def run(opts: argparse.Namespace | list[argparse.Namespace], kind: str) -> list[dict[str, Any]]:
    """Train the run (or the pack of runs) ``opts``; ``kind`` is ``"teacher"`` or ``"student"``; the summaries."""
    from helper.pack import Pack

    pack = Pack([opts] if isinstance(opts, argparse.Namespace) else list(opts), kind)
    try:
        return pack.execute()
    finally:
        pack.close()
