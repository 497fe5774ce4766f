"""The optimisers and the multi-step learning-rate schedule of the CIFAR/ImageNet recipes (METHODS.md §3.2).

``--optimizer sgd`` is plain SGD with momentum. ``--optimizer dot`` is DOT (Zhao et al.,
"DOT: A Distillation-Oriented Trainer", ICCV 2023): SGD with one momentum buffer for the
gradient of the task loss and another for the gradient of the distillation loss, the task
momentum ``μ − Δ`` and the distillation momentum ``μ + Δ``, so that the distillation
gradient, accumulated longer, dominates the update. DOT knows no method: the training loop
splits the weighted loss by the names of the Distiller's terms (:func:`is_task_term`),
backpropagates the two parts separately and hands both gradients to the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from errors import UsageError

OPTIMIZERS = ("sgd", "dot")
DOT_DELTA = 0.075  # Δ of the paper and of mdistiller's configurations


def make_sgd(parameters: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter, fused or foreach when available."""
    on_cuda = any(p.is_cuda for p in parameters)
    kwargs = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, **kwargs)


def make_optimizer(name: str, parameters: list[nn.Parameter], lr: float, momentum: float, weight_decay: float,
                   dot_delta: float = DOT_DELTA, amp: str | None = None) -> torch.optim.Optimizer:
    """The ``--optimizer`` of a run: :func:`make_sgd`, or DOT with momenta ``momentum ∓ dot_delta``.

    DOT does not run with ``--amp fp16``: the gradient scaler unscales and checks only the
    gradient left on the parameters, not the distillation gradient DOT keeps aside.
    """
    if name == "sgd":
        return make_sgd(parameters, lr, momentum, weight_decay)
    if name != "dot":
        raise UsageError(f"unknown --optimizer {name!r}; choose one of: {' '.join(OPTIMIZERS)}")
    if amp == "fp16":
        raise UsageError("--optimizer dot does not run with --amp fp16 (its gradient scaler would see only the "
                         "task gradient); use --amp bf16 or no --amp")
    if momentum - dot_delta < 0 or momentum + dot_delta >= 1:
        raise UsageError(f"--optimizer dot needs --momentum ± --dot_delta in [0, 1), got --momentum {momentum} "
                         f"and --dot_delta {dot_delta}")
    return DistillationOrientedTrainer(parameters, lr=lr, momentum=momentum - dot_delta,
                                       momentum_kd=momentum + dot_delta, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int],
                   rate: float) -> torch.optim.lr_scheduler.MultiStepLR:
    """lr · rate^#{m : epoch > m}: stepped once per epoch, after the epoch (epochs are 1-indexed)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=rate)


def is_task_term(name: str) -> bool:
    """Whether a loss term is part of DOT's task loss: ``cls``, and ``cls_*`` (MLKD's CE on its second view).

    Every other term (``kd`` and the method's own) is distillation.
    """
    return name == "cls" or name.startswith("cls_")


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """DOT: SGD with separate momentum for the task-loss and the distillation-loss gradients.

    The name, the constructor and the two-call protocol are mdistiller's::

        optimizer.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        optimizer.step_kd()        # takes the distillation gradient off the parameters
        optimizer.zero_grad(set_to_none=True)
        loss_task.backward()
        optimizer.step()           # updates both buffers, then the parameters

    ``momentum`` is the task momentum (``μ − Δ``), ``momentum_kd`` the distillation momentum
    (``μ + Δ``). With ``g`` the task gradient, ``h`` the distillation gradient, ``λ`` the
    weight decay and ``w`` a parameter, a parameter that receives both gradients updates

        m_task ← (μ − Δ)·m_task + g + λ·w,   m_kd ← (μ + Δ)·m_kd + h,   w ← w − lr·(m_task + m_kd);

    a parameter that receives only one of them (a classifier reached by the task loss alone,
    a projector reached by the distillation loss alone) updates that buffer with the mean
    momentum ``μ`` and the weight decay, as plain SGD would. A buffer starts as its first
    gradient (with the weight decay for the task buffer; without it for the distillation
    buffer, as mdistiller does: it adds the weight decay to a distillation-only parameter's
    gradient only from the second step on). Both buffers live in ``state[p]``
    (``momentum_buffer``, ``momentum_kd_buffer``), so :meth:`state_dict` carries them.
    One parameter group, no dampening, no Nesterov, as upstream.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0, momentum_kd: float = 0.0,
                 weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or momentum_kd < 0 or weight_decay < 0:
            raise ValueError("lr, momentum, momentum_kd and weight_decay must not be negative")
        super().__init__(params, {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd,
                                  "weight_decay": weight_decay})
        if len(self.param_groups) != 1:
            raise ValueError("DistillationOrientedTrainer takes one parameter group")
        self._kd_grads: list[torch.Tensor | None] | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def step_kd(self) -> None:
        """Keep the gradients now on the parameters as the distillation gradient of this step."""
        self._kd_grads = [p.grad for p in self.params]

    @torch.no_grad()
    def step(self, closure=None):
        """Update both momentum buffers (task: the gradients now on the parameters) and the parameters."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        kd_grads = self._kd_grads if self._kd_grads is not None else [None] * len(self.params)
        for parameter, kd_grad in zip(self.params, kd_grads):
            self._update(parameter, parameter.grad, kd_grad, group)
        self._kd_grads = None
        return loss

    def _update(self, parameter: nn.Parameter, task_grad: torch.Tensor | None, kd_grad: torch.Tensor | None,
                group: dict) -> None:
        """One parameter's step from its task and distillation gradients (either may be missing)."""
        both = task_grad is not None and kd_grad is not None
        single = (group["momentum"] + group["momentum_kd"]) / 2
        state = self.state[parameter]
        if task_grad is not None:
            step = task_grad.add(parameter, alpha=group["weight_decay"])
            buffer = _accumulate(state, "momentum_buffer", step, group["momentum"] if both else single)
            parameter.add_(buffer, alpha=-group["lr"])
        if kd_grad is not None:
            first = "momentum_kd_buffer" not in state
            step = kd_grad if both or first else kd_grad.add(parameter, alpha=group["weight_decay"])
            buffer = _accumulate(state, "momentum_kd_buffer", step, group["momentum_kd"] if both else single)
            parameter.add_(buffer, alpha=-group["lr"])


def _accumulate(state: dict, key: str, step: torch.Tensor, momentum: float) -> torch.Tensor:
    """``state[key] ← momentum·state[key] + step`` (``step`` itself the first time); the buffer."""
    buffer = state.get(key)
    if buffer is None:
        buffer = state[key] = step.detach().clone()
    else:
        buffer.mul_(momentum).add_(step)
    return buffer
