"""One training epoch and one evaluation pass, for any Distiller (the teacher run included).

Nothing here knows a method: a Distiller returns named loss terms and says how much each term
weighs. Per step the host never waits for the device except when a log line is due (and on
the CPU, where checking costs nothing, for the NaN guard).

With ``--optimizer dot`` the step backpropagates the task terms and the distillation terms
separately (:func:`dot_backward_and_step`); with SGD it is one backward pass of the weighted
sum, exactly as before DOT existed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dataset.batch import Batch
from distiller_zoo.base import TeacherPass
from helper.distributed import all_reduce_sum
from helper.logger import Progress
from helper.meters import AverageMeter, accuracy
from helper.optim import DistillationOrientedTrainer, is_task_term
from helper.seeding import RandomStreams


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; the run stops and keeps its last good checkpoint."""

    def __init__(self, epoch: int, iteration: int, term: str):
        super().__init__(f"loss term '{term}' became non-finite at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration, self.term = epoch, iteration, term


@dataclass(frozen=True)
class StepConfig:
    """How steps run: device, autocast precision, memory layout, logging frequency."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    print_freq: int = 100
    is_main: bool = True

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def weighted_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight·term; a term the Distiller gives no weight for is a programming error."""
    unweighted = set(terms) - set(weights)
    if unweighted:
        raise KeyError(f"loss terms without a weight: {sorted(unweighted)}")
    return sum(weights[name] * value for name, value in terms.items())


@dataclass
class EpochProgress:
    """How far an interrupted epoch got: the last finished iteration and its running sums."""

    iteration: int = 0
    meters: dict[str, tuple[float, int]] = field(default_factory=dict)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None = None) -> None:
    """Clear the gradients, backpropagate ``loss`` and step, through the fp16 gradient scaler if any."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def split_weighted_loss(terms: dict[str, torch.Tensor],
                        weights: dict[str, float]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """DOT's two losses: the weighted task terms (:func:`~helper.optim.is_task_term`) and the weighted rest.

    Either is ``None`` when there is no such term (a teacher run has no distillation terms).
    """
    task = {name: value for name, value in terms.items() if is_task_term(name)}
    distillation = {name: value for name, value in terms.items() if not is_task_term(name)}
    return (weighted_loss(task, weights) if task else None,
            weighted_loss(distillation, weights) if distillation else None)


def dot_backward_and_step(terms: dict[str, torch.Tensor], weights: dict[str, float],
                          optimizer: DistillationOrientedTrainer, model: nn.Module) -> torch.Tensor:
    """DOT's step: the distillation gradient, then the task gradient, then one update; the weighted loss.

    Under torchrun the forward ran without DDP's gradient synchronisation (:func:`_gradient_sync_off`),
    since DDP synchronises one backward pass per forward; each of the two gradients is averaged
    over the processes here instead, as DDP would have averaged their sum.
    """
    task, distillation = split_weighted_loss(terms, weights)
    optimizer.zero_grad(set_to_none=True)
    if distillation is not None:
        distillation.backward(retain_graph=task is not None)
        _average_gradients(model, optimizer.params)
    optimizer.step_kd()
    optimizer.zero_grad(set_to_none=True)
    if task is not None:
        task.backward()
        _average_gradients(model, optimizer.params)
    optimizer.step()
    return sum(loss.detach() for loss in (task, distillation) if loss is not None)


def _gradient_sync_off(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for a wrapped model (the forward then prepares no gradient all-reduce)."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()


def _average_gradients(model: nn.Module, parameters: list[nn.Parameter]) -> None:
    """Replace the parameters' gradients by their mean over the processes (a DDP-wrapped model only)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not isinstance(model, DistributedDataParallel) or not grads:
        return
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / dist.get_world_size()
    for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(mean.view_as(grad))


class EpochTrainer:
    """One task's pass over one training epoch, fed batch by batch.

    A solo run has one; a pack (several runs sharing the teacher and the data stream) has one
    per member, all fed the same batches, each stepping its own task with its own optimizer,
    meters and random streams (``streams``). A member that trains on full batches only
    (``full_batches``, the method's ``drop_last`` need) skips a last partial batch the shared
    loader yields for the others. :meth:`step` raises :class:`NonFiniteLoss` for this task
    alone. ``resume_from`` continues an interrupted epoch: the loader replays the same epoch
    (its randomness depends on the epoch alone) and the finished iterations are skipped.
    """

    def __init__(self, model: nn.Module, weights: dict[str, float], optimizer: torch.optim.Optimizer,
                 config: StepConfig, epoch: int, num_batches: int, label: str = "train",
                 scaler: torch.amp.GradScaler | None = None, resume_from: EpochProgress | None = None,
                 full_batches: int | None = None, streams: RandomStreams | None = None):
        self.model, self.weights, self.optimizer, self.config = model, weights, optimizer, config
        self.epoch, self.scaler, self.full_batches, self.streams = epoch, scaler, full_batches, streams
        self.meters: dict[str, AverageMeter] = {"loss": AverageMeter(), "acc1": AverageMeter(), "acc5": AverageMeter()}
        self.skip = 0
        if resume_from is not None:
            self.skip = resume_from.iteration
            for name, (total, count) in resume_from.meters.items():
                self.meters.setdefault(name, AverageMeter()).restore(total, count)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=config.device)
        self.term_names: list[str] = []
        self.check_every_step = config.device.type == "cpu"
        self.progress = Progress(num_batches, f"{label} epoch {epoch}", config.print_freq, config.is_main)
        self.dot = isinstance(optimizer, DistillationOrientedTrainer)
        self.images_seen = 0
        self.last_iteration = self.skip
        model.train()

    def wants(self, iteration: int, batch: Batch) -> bool:
        """Whether this task trains on the loader's ``iteration``-th batch."""
        return iteration > self.skip and (self.full_batches is None or len(batch) == self.full_batches)

    def step(self, iteration: int, batch: Batch, teacher: TeacherPass | None = None) -> None:
        """Train on one batch (already on the device); ``teacher`` shares the teacher's outputs."""
        with self.streams.active() if self.streams is not None else contextlib.nullcontext():
            self._step(iteration, batch, teacher)
        self.last_iteration = iteration

    def _step(self, iteration: int, batch: Batch, teacher: TeacherPass | None) -> None:
        model, config = self.model, self.config
        with config.autocast(), (_gradient_sync_off(model) if self.dot else contextlib.nullcontext()):
            prediction, terms = model(batch) if teacher is None else model(batch, teacher)
        self.term_names = list(terms)
        stacked = torch.stack([value.detach().float() for value in terms.values()])
        finite = torch.isfinite(stacked)
        if self.check_every_step:
            if not bool(finite.all()):
                raise NonFiniteLoss(self.epoch, iteration, self.term_names[int((~finite).nonzero()[0])])
        else:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite.all(), iteration, self.first_bad)

        if self.dot:
            loss = dot_backward_and_step(terms, self.weights, self.optimizer, model)
        else:
            loss = weighted_loss(terms, self.weights)
            backward_and_step(loss, self.optimizer, self.scaler)

        n = len(batch)
        self.images_seen += n
        top1, top5 = accuracy(prediction.detach(), batch.targets)
        meters = self.meters
        meters["loss"].update(loss.detach(), n)
        meters["acc1"].update(top1, n)
        meters["acc5"].update(top5, n)
        for name, value in zip(self.term_names, stacked):
            meters.setdefault(name, AverageMeter()).update(value, n)
        if self.progress.wants_update(iteration):
            self._raise_if_non_finite()
            self.progress.update(iteration, {"loss": meters["loss"].avg, "acc1": meters["acc1"].avg})

    def _raise_if_non_finite(self) -> None:
        """On a GPU the check is deferred to log lines and the epoch's end (it syncs the device)."""
        if not self.check_every_step and int(self.first_bad) >= 0:
            raise NonFiniteLoss(self.epoch, int(self.first_bad), "(one of) " + ", ".join(self.term_names))

    def interrupted(self) -> EpochProgress:
        """Where the epoch stopped, to continue from (``resume_from``)."""
        self.progress.close()
        return EpochProgress(self.last_iteration, {n: (float(m.total), m.count) for n, m in self.meters.items()})

    def finish(self, elapsed: float) -> dict[str, float]:
        """The epoch means of the weighted loss, every term and top-1/top-5 (over processes), images/s."""
        self.progress.close()
        self._raise_if_non_finite()
        record = _reduced_means(self.meters, self.config.device)
        record["images_per_second"] = self.images_seen / max(elapsed, 1e-9)
        return record


def feed_epoch(trainers: list[EpochTrainer], loader: Iterable[Batch], config: StepConfig,
               teacher: nn.Module | None = None, should_stop: Callable[[], bool] = lambda: False,
               on_failure: Callable[[EpochTrainer, NonFiniteLoss], None] | None = None) -> bool:
    """Feed every batch of ``loader`` to every trainer that wants it, the teacher run once per batch.

    A trainer whose loss becomes non-finite is handed to ``on_failure`` and fed no more (without
    ``on_failure`` the error propagates). Returns True when ``should_stop`` ended the epoch early.
    """
    live = list(trainers)
    for iteration, batch in enumerate(loader, start=1):
        wanting = [trainer for trainer in live if trainer.wants(iteration, batch)]
        if wanting:
            batch = batch.to(config.device, channels_last=config.channels_last)
            shared = None if teacher is None else TeacherPass(teacher, batch.images)
            for trainer in wanting:
                try:
                    trainer.step(iteration, batch, shared)
                except NonFiniteLoss as error:
                    if on_failure is None:
                        raise
                    live.remove(trainer)
                    on_failure(trainer, error)
        if not live:
            return False
        if should_stop():
            return True
    return False


def train_one_epoch(
    model: nn.Module,
    weights: dict[str, float],
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    config: StepConfig,
    epoch: int,
    label: str = "train",
    scaler: torch.amp.GradScaler | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    resume_from: EpochProgress | None = None,
) -> tuple[dict[str, float], EpochProgress | None]:
    """Train ``model`` (a task, possibly DDP-wrapped) for one pass over ``loader``, on its own.

    Returns the epoch's record (:meth:`EpochTrainer.finish`) and ``None``; or, when
    ``should_stop`` ended the epoch early, an empty record and the :class:`EpochProgress` to
    continue from.
    """
    trainer = EpochTrainer(model, weights, optimizer, config, epoch, len(loader), label, scaler, resume_from)
    start = time.perf_counter()
    if feed_epoch([trainer], loader, config, should_stop=should_stop):
        return {}, trainer.interrupted()
    return trainer.finish(time.perf_counter() - start), None


def _reduced_means(meters: dict[str, AverageMeter], device: torch.device) -> dict[str, float]:
    """Sample-weighted means over all processes."""
    names = list(meters)
    totals = torch.tensor([float(meters[n].total) for n in names] + [float(meters["loss"].count)],
                          dtype=torch.float64, device=device)
    totals = all_reduce_sum(totals).tolist()
    count = max(totals[-1], 1.0)
    return {name: total / count for name, total in zip(names, totals[:-1])}


@torch.no_grad()
def validate(predict: Callable[[torch.Tensor], torch.Tensor], loader: Iterable[Batch],
             config: StepConfig) -> dict[str, float]:
    """Top-1, top-5 and cross-entropy of ``predict`` over ``loader`` (summed over processes)."""
    sums = torch.zeros(4, dtype=torch.float64, device=config.device)
    for batch in loader:
        batch = batch.to(config.device, channels_last=config.channels_last)
        with config.autocast():
            logits = predict(batch.images)
        logits = logits.float()
        n = len(batch)
        top1, top5 = accuracy(logits, batch.targets)
        loss = nn.functional.cross_entropy(logits, batch.targets, reduction="sum")
        sums += torch.stack([top1 * n / 100, top5 * n / 100, loss, torch.tensor(n, device=config.device)]).double()
    correct1, correct5, loss_sum, count = all_reduce_sum(sums).tolist()
    count = max(count, 1.0)
    return {"acc1": 100 * correct1 / count, "acc5": 100 * correct5 / count, "loss": loss_sum / count}
