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
from helper.distributed import all_reduce_sum
from helper.logger import Progress
from helper.meters import AverageMeter, accuracy
from helper.optim import DistillationOrientedTrainer, is_task_term


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
    """Train ``model`` (a Distiller, possibly DDP-wrapped) for one pass over ``loader``.

    Returns the epoch means of the weighted loss, every term, and top-1/top-5 accuracy
    (reduced over processes) with images per second, and ``None``; or, when ``should_stop``
    ended the epoch early, the partial record and the :class:`EpochProgress` to continue
    from. ``resume_from`` continues such an epoch: the loader replays the same epoch (its
    randomness depends on the epoch alone) and the finished iterations are skipped.
    """
    model.train()
    meters: dict[str, AverageMeter] = {"loss": AverageMeter(), "acc1": AverageMeter(), "acc5": AverageMeter()}
    skip = 0
    if resume_from is not None:
        skip = resume_from.iteration
        for name, (total, count) in resume_from.meters.items():
            meters.setdefault(name, AverageMeter()).restore(total, count)
    first_bad = torch.full((), -1, dtype=torch.long, device=config.device)
    term_names: list[str] = []
    check_every_step = config.device.type == "cpu"
    progress = Progress(len(loader), f"{label} epoch {epoch}", config.print_freq, config.is_main)
    start, images_seen, stopped_at = time.perf_counter(), 0, None
    dot = isinstance(optimizer, DistillationOrientedTrainer)

    for iteration, batch in enumerate(loader, start=1):
        if iteration <= skip:
            continue
        batch = batch.to(config.device, channels_last=config.channels_last)
        with config.autocast(), (_gradient_sync_off(model) if dot else contextlib.nullcontext()):
            prediction, terms = model(batch)
        term_names = list(terms)
        stacked = torch.stack([value.detach().float() for value in terms.values()])
        finite = torch.isfinite(stacked)
        if check_every_step:
            if not bool(finite.all()):
                raise NonFiniteLoss(epoch, iteration, term_names[int((~finite).nonzero()[0])])
        else:
            first_bad = torch.where((first_bad < 0) & ~finite.all(), iteration, first_bad)

        if dot:
            loss = dot_backward_and_step(terms, weights, optimizer, model)
        else:
            loss = weighted_loss(terms, weights)
            backward_and_step(loss, optimizer, scaler)

        n = len(batch)
        images_seen += n
        top1, top5 = accuracy(prediction.detach(), batch.targets)
        meters["loss"].update(loss.detach(), n)
        meters["acc1"].update(top1, n)
        meters["acc5"].update(top5, n)
        for name, value in zip(term_names, stacked):
            meters.setdefault(name, AverageMeter()).update(value, n)

        if progress.wants_update(iteration):
            if not check_every_step and int(first_bad) >= 0:
                raise NonFiniteLoss(epoch, int(first_bad), "(one of) " + ", ".join(term_names))
            progress.update(iteration, {"loss": meters["loss"].avg, "acc1": meters["acc1"].avg})
        if should_stop():
            stopped_at = iteration
            break
    progress.close()
    if not check_every_step and int(first_bad) >= 0:
        raise NonFiniteLoss(epoch, int(first_bad), "(one of) " + ", ".join(term_names))

    elapsed = time.perf_counter() - start
    if stopped_at is not None:
        return {}, EpochProgress(stopped_at, {n: (float(m.total), m.count) for n, m in meters.items()})
    record = _reduced_means(meters, config.device)
    record["images_per_second"] = images_seen / max(elapsed, 1e-9)
    return record, None


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
