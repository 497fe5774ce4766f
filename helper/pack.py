"""Packed runs: several students trained in one process from one teacher pass and one data stream.

Every run of a CIFAR-100 table recomputes the same frozen teacher on the same images and uses
a sliver of a modern GPU. A pack builds the data and the teacher once and trains its members
side by side: per step, one batch, one teacher forward (:class:`~distiller_zoo.base.TeacherPass`),
then each member's own forward, backward and update. A solo run is a pack of one.

Each member is exactly its solo run (the command line :func:`helper.pack_args.member_argvs`
gives it): its own parameters, optimizer, schedule, loss weights, run folder, logs and
checkpoints, and its own random streams. What makes its weights bit-identical to the solo
run's (``--deterministic``, CPU):

* the loaders draw augmentation, contrastive negatives and the second view from streams of
  their own (``dataset``), so serving the union of the members' needs changes no member's
  batches; a member that trains on full batches only skips the last partial one;
* every member's task is built from the global random state the solo run builds it from (the
  state right after the teacher), and each member steps with its own global random state
  swapped in (:class:`~helper.seeding.RandomStreams`);
* the teacher's outputs are the same tensors the member's own teacher pass would compute.

Members advance epoch by epoch; members at different points (a pre-training stage, a resumed
pack whose members saved different epochs) train in turn, each epoch with those at the same
point. A member whose loss becomes non-finite stops alone; the others go on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import dataset
from dataset.batch import DataNeeds
from errors import UsageError
from helper.components import build_data, build_task, data_needs, prepare_task
from helper.distributed import destroy_process_group, init_process_group
from helper.driver import AMP_DTYPES, Interrupted, Run, Shared, run_name, select_device
from helper.loops import NonFiniteLoss, StepConfig, feed_epoch, validate
from helper.run_folder import check_writable
from helper.seeding import rng_state, seed_everything, set_rng_state
from helper.signals import StopFlag
from helper.teacher import build_teacher, read_teacher

STAGE_LABELS = ("init", "train")  # the loader label of stage 0 (pre-training) and 1 (the main stage)


class PackStopped(NonFiniteLoss):
    """Members of a pack stopped on a non-finite loss (the others finished)."""

    def __init__(self, failures: list[str]):
        RuntimeError.__init__(self, "; ".join(failures))


def union_needs(needs: list[DataNeeds]) -> DataNeeds:
    """One training loader that serves every member: indices, negatives and the second view if any asks.

    Full batches only when every member asks for them (the others would lose the last batch);
    members disagreeing on the contrastive draws (number of negatives, mode) cannot share a loader.
    """
    contrast = {(n.contrast_k, n.contrast_mode) for n in needs if n.contrast_k > 0}
    if len(contrast) > 1:
        raise UsageError("the runs of a pack must draw the same contrastive negatives (--nce_k, --mode); "
                         "run the methods that differ in separate packs")
    k, mode = contrast.pop() if contrast else (0, "exact")
    return DataNeeds(indices=any(n.indices for n in needs), contrast_k=k, contrast_mode=mode,
                     drop_last=all(n.drop_last for n in needs), strong_view=any(n.strong_view for n in needs))


class Pack:
    """The runs of one command line (one, or several sharing a teacher and the data), from options to folders."""

    def __init__(self, opts: list[argparse.Namespace], kind: str):
        first = opts[0]
        self.kind = kind
        device = select_device(first.device)
        if first.amp == "fp16" and device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device; on CPU use --amp bf16")
        process = init_process_group(device.type)
        if device.type == "cuda":
            device = torch.device("cuda", process.local_rank)
        seed_everything(first.seed + process.rank, first.deterministic)

        save_dir = Path(first.save_dir).expanduser()
        check_writable(save_dir)
        teacher_file = (read_teacher(first.path_t, first.model_t, first.dataset, first.pretrained_t)
                        if kind == "student" else None)
        teacher_arch = None if teacher_file is None else teacher_file.arch
        names = [run_name(opt, teacher_arch) for opt in opts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UsageError(f"the pack names run {repeated[0]} twice; give each run its own method, student "
                             "or weights")

        distils = kind == "student"
        needs = [data_needs(opt, distils) for opt in opts]
        data = build_data(first, union_needs(needs), device, process)
        self.full_batches = [first.batch_size if need.drop_last else None for need in needs]
        if any(self.full_batches):
            dataset.check_full_batches(first.batch_size, data.num_train, process.world_size)
        config = StepConfig(device, AMP_DTYPES[first.amp], first.channels_last, first.print_freq, process.is_main)
        self.shared = Shared(device, process, data, config, teacher_arch)
        teacher = None
        if teacher_file is not None:
            teacher = build_teacher(teacher_file, data.num_classes, data.image_size, dataset=first.dataset)
        built = rng_state()  # each member's task is built from this state, as its solo run builds it
        self.teacher = teacher
        self.runs: list[Run] = []
        for opt, name in zip(opts, names):
            set_rng_state(built)
            task = build_task(opt, data, teacher, teacher_arch)
            prepare_task(task, device, opt.channels_last, opt.compile and not self.runs,
                         sync_bn=opt.sync_bn and process.distributed)
            if opt.compile and self.runs:
                task.student.compile()  # the shared teacher was compiled with the first member
            run = Run(opt, kind, task, self.shared, name, save_dir)
            for folder in (run.run_dir, run.tensorboard_dir):
                check_writable(folder)
            self.runs.append(run)
        for run in self.runs:
            run.claim_folder()
        self.stop = StopFlag(process, device, agree_every=min(first.print_freq, 20))
        self.opts = opts

    # ----------------------------------------------------------------------------------------

    def execute(self) -> list[dict[str, Any]]:
        """Train every unfinished member to its last epoch; return the members' summaries."""
        start = time.perf_counter()
        todo = []
        for run in self.runs:
            if run.finished:
                run.logger.info(f"run {run.name} is already finished ({run.opt.epochs} epochs); nothing to do")
            else:
                todo.append(run)
        if not todo:
            return [{"run_name": run.name, "finished": True} for run in self.runs]
        self.stop.install()
        for run in todo:
            run.start()
        first = self.opts[0]
        if self.kind == "student" and not first.skip_validation:
            self.shared.teacher_acc = validate(self.teacher, self.shared.data.test, self.shared.config)["acc1"]
            for run in todo:
                run.logger.info(f"teacher accuracy: {self.shared.teacher_acc:.2f}")
        # Feature readers step first, so that a logits-only member reuses their teacher pass.
        stepping = sorted(todo, key=lambda run: not getattr(run.task, "uses_features", True))
        while True:
            points = {run: run.next_epoch() for run in stepping}
            due = [point for point in points.values() if point is not None]
            if not due:
                break
            point = min(due)
            self._train_epoch([run for run in stepping if points[run] == point], *point)
        wall_time = time.perf_counter() - start
        summaries = [run.summary(wall_time) for run in todo]
        failed = [run for run in todo if run.failure is not None]
        if len(self.runs) == 1 and failed:
            raise failed[0].failure
        if failed:
            raise PackStopped([f"run {run.name}: {run.failure}" for run in failed])
        return summaries

    def _train_epoch(self, runs: list[Run], stage: int, epoch: int) -> None:
        """One epoch of ``runs`` (all at the same stage and epoch) on one pass of the training loader."""
        label = STAGE_LABELS[stage]
        loader = self.shared.data.train
        loader.set_epoch(epoch if stage == 1 else -epoch)
        trainers = {run.begin_epoch(epoch, len(loader), label if len(self.runs) == 1 else f"{run.name} {label}",
                                    self.full_batches[self.runs.index(run)]): run for run in runs}
        start = time.perf_counter()
        stopped = feed_epoch(list(trainers), loader, self.shared.config, self.teacher, self.stop,
                             on_failure=lambda trainer, error: trainers[trainer].fail(error))
        if stopped:
            for run in runs:
                if run.failure is None:
                    run.save_interrupted()
            raise Interrupted(f"{label} epoch {epoch}, iteration {max(t.last_iteration for t in trainers)}")
        elapsed = time.perf_counter() - start
        for run in runs:
            if run.failure is None:
                run.end_epoch(elapsed)

    def close(self) -> None:
        self.stop.uninstall()
        for run in self.runs:
            run.close()
        destroy_process_group()

