"""CTKD: Z. Li, X. Li, L. Yang, B. Zhao, R. Song, L. Luo, J. Li and J. Yang, "Curriculum Temperature for
Knowledge Distillation" (AAAI 2023).

KD whose temperature is learned, adversarially and on a curriculum (the global variant, the one
of the KD+CTKD numbers; upstream ``zhengli97/CTKD`` with ``--have_mlp 1 --mlp_name global``):

* one trainable scalar ``θ`` (``Global_T.global_T``, initialised to 1) gives the temperature
  ``τ = t_start + t_end · sigmoid(θ)`` = ``1 + 20·sigmoid(θ)`` (15.62 at the start);
* ``θ`` reaches the loss through a gradient-reversal layer: the forward pass is the identity,
  the backward pass multiplies the gradient by ``λ``. ``λ`` is negative, so ``θ`` climbs the
  KD loss while the student descends it (the task gets harder as the student learns);
* ``λ`` follows a cosine curriculum over the 1-indexed epoch ``e``:
  ``λ(e) = λ_min + (λ_max − λ_min) · (1 + cos(π · min(e, L) / L)) / 2`` with ``λ_max = 0``,
  ``λ_min = −1`` and ``L = 10`` epochs on CIFAR (``--decay_loops 5`` on ImageNet), so ``λ(1) ≈
  −0.025`` and ``λ = −1`` from epoch ``L`` on (upstream ``CosineDecay.get_value(epoch)``);
* the KD term is ``KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) · τ²`` (batch mean), i.e. ``DistillKL``
  called with the learned ``τ`` as its third argument.

The learned-temperature KD *is* this Distiller's ``kd`` term (``self.kd_loss``), weighted by
``-a`` as upstream weighs its ``criterion_div``; the method has no term of its own. ``--kd_T``
is not used. Recommended weights are upstream's CIFAR script, ``-r 0.1 -a 0.9 -b 0`` (ImageNet:
``-r 1 -a 1 -b 0 --decay_loops 5``). ``θ`` is a trainable part: it is in
:meth:`main_parameters` (optimised by the student's SGD, with its weight decay, as upstream puts
the module in its ``trainable_list``) and in :meth:`trainable_state_dict` as
``kd_loss.mlp.global_T``, so checkpoints and exact resume carry it. ``λ`` is a function of the
epoch and is recomputed by :meth:`set_epoch`.

Upstream disagreements: the gradient-reversal docstring says the gradient is multiplied by
``−λ``, the code multiplies by ``λ`` and takes the sign from the negative ``λ``; this file does
what the code does. CTKD's own ``LinearDecay`` (``--cosine_decay 0``) ignores ``λ_max`` and is
not offered; every published number uses the cosine schedule. ``--logit_stand`` z-scores both
networks' logits before they are softened at ``τ`` (``DistillKL_logit_stand``); the logit
standardisation repository's CTKD port picks that criterion when its ``--logit_stand`` flag is
*absent* (an inverted condition), so its published CTKD+LS runs, launched without the flag, are
standardised. Here the flag means what it says. Its CTKD+LS recipe is ``--logit_stand -r 0.1 -a 9``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import Function

from distiller_zoo.base import Distiller, DistillSetup, Weights, argument
from distiller_zoo.common import DistillKL, DistillKL_logit_stand
from distiller_zoo.flags import LOGIT_STAND
from distiller_zoo.registry import register

__all__ = ["CTKD", "CosineDecay", "Global_T", "GradientReversal", "LearnedTemperatureKD"]

T_START = argument("--t_start", type=float, default=1.0, help="CTKD: lowest temperature (τ = t_start + t_end·σ(θ))")
T_END = argument("--t_end", type=float, default=20.0, help="CTKD: temperature range (τ = t_start + t_end·σ(θ))")
DECAY_MAX = argument("--decay_max", type=float, default=0.0, help="CTKD: gradient-reversal λ at epoch 0")
DECAY_MIN = argument("--decay_min", signed=True, type=float, default=-1.0,
                     help="CTKD: gradient-reversal λ after the curriculum")
DECAY_LOOPS = argument("--decay_loops", type=float, default=10.0,
                       help="CTKD: epochs over which λ goes from --decay_max to --decay_min (10 CIFAR, 5 ImageNet)")


class GradientReversalFunction(Function):
    """Identity forward; backward multiplies the incoming gradient by ``lambda_``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grads.new_tensor(ctx.lambda_) * grads, None


class GradientReversal(nn.Module):
    """``GradientReversal()(x, lambda_)``: ``x`` forward, ``λ · grad`` backward (CTKD's layer)."""

    def forward(self, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        return GradientReversalFunction.apply(x, lambda_)


class Global_T(nn.Module):
    """CTKD's global temperature module: one parameter ``global_T`` (initialised to 1) behind a
    gradient-reversal layer. Called as upstream, ``(logit_t, logit_s, lambda_)``; the two logit
    arguments are unused by the global variant."""

    def __init__(self):
        super().__init__()
        self.global_T = nn.Parameter(torch.ones(1), requires_grad=True)
        self.grl = GradientReversal()

    def forward(self, fake_input1: torch.Tensor, fake_input2: torch.Tensor, lambda_: float) -> torch.Tensor:
        return self.grl(self.global_T, lambda_)


class CosineDecay:
    """``CosineDecay(max_value, min_value, num_loops).get_value(i)``: cosine from ``max_value``
    at ``i = 0`` to ``min_value`` at ``i = num_loops``, constant outside ``[0, num_loops]``."""

    def __init__(self, max_value: float, min_value: float, num_loops: float):
        self._max_value = max_value
        self._min_value = min_value
        self._num_loops = num_loops

    def get_value(self, i: float) -> float:
        i = min(max(i, 0), self._num_loops)
        fraction = (math.cos(i * math.pi / self._num_loops) + 1.0) * 0.5
        return fraction * (self._max_value - self._min_value) + self._min_value


class LearnedTemperatureKD(nn.Module):
    """The KD term at CTKD's learned temperature ``t_start + t_end·sigmoid(global_T)``.

    Called ``(y_s, y_t)`` like ``DistillKL``, so it replaces a Distiller's ``kd_loss``;
    ``lambda_`` is the current gradient-reversal factor (set each epoch by the Distiller).
    """

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, logit_stand: bool = False):
        super().__init__()
        self.t_start = t_start
        self.t_end = t_end
        self.lambda_ = 0.0
        self.mlp = Global_T()
        self.criterion = DistillKL_logit_stand() if logit_stand else DistillKL()

    def temperature(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        """The learned temperature as a 0-d tensor (gradients pass through the reversal layer)."""
        theta = self.mlp(y_t, y_s, self.lambda_)
        return (self.t_start + self.t_end * torch.sigmoid(theta)).reshape(())

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        return self.criterion(y_s, y_t, self.temperature(y_s, y_t))


@register("ctkd")
class CTKD(Distiller):
    """KD at a learned, curriculum-driven temperature; ``-r 0.1 -a 0.9 -b 0`` (CTKD's CIFAR script)."""

    recommended = Weights(gamma=0.1, alpha=0.9, beta=0.0)
    uses_features = False
    arguments = (T_START, T_END, DECAY_MAX, DECAY_MIN, DECAY_LOOPS, LOGIT_STAND)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, t_start: float,
                 t_end: float, decay_max: float, decay_min: float, decay_loops: float, logit_stand: bool | None):
        super().__init__(student, teacher, setup)
        self.curriculum = CosineDecay(decay_max, decay_min, decay_loops)
        self.kd_loss = LearnedTemperatureKD(t_start, t_end, logit_stand=bool(logit_stand))
        self.set_epoch(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Also move the gradient-reversal factor λ along the cosine curriculum."""
        super().set_epoch(epoch)
        self.kd_loss.lambda_ = self.curriculum.get_value(epoch)

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """No term of its own: the learned-temperature KD is the ``kd`` term, weighed by ``-a``."""
        return {}
