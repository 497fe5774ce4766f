"""OFD: Heo, Kim, Yun, Park, Kwak and Choi, "A Comprehensive Overhaul of Feature Distillation"
(ICCV 2019).

Both networks are tapped before their last activations (``preact``). Each student stage map
``s_i`` passes a connector ``r_i`` (Conv k×k without bias, then BN) to the teacher's width; the
teacher map ``t_i`` is average-pooled to the student's resolution. With the teacher's margin
``m`` per channel, the partial L2 distance ignores what the teacher's ReLU would erase anyway:

    d(s, t) = (s − t)²  where  s > t  or  t > 0,   0 elsewhere,   t ← max(t, m)
    L_OFD = Σ_i 2^{−(n−1−i)} · (1/B) Σ_{b,c,h,w} d(r_i(s_i), t_i)      (i = 0 … n−1, deepest weight 1)

``m`` is the expectation of a channel's pre-ReLU value given that it is negative, from the
teacher BN before the ReLU (``get_bn_before_relu``; scale ``γ``, shift ``β``, ``x ~ N(β, γ²)``):
``m = β − |γ|·φ(β/|γ|) / Φ(−β/|γ|)``, or ``−3|γ|`` where ``Φ(−β/|γ|) ≤ 0.001``. The margins are
fixed when the Distiller is built, from the loaded teacher.

When the networks have different numbers of stages, the deepest ones are paired (mdistiller's
``_align_list``); the margins follow the teacher stages actually paired (mdistiller keeps the
first ones, which misaligns them with the features and fails on their channel counts).

Weights: ``-r 1 -a 0 -b 0.001`` on CIFAR (the original divides the summed distance by the batch
and by 1000); ImageNet ``-b 0.0001`` (by 10000).

**Teacher mode.** The original code and mdistiller both run the teacher in train mode during
distillation, so its pre-ReLU taps are normalised with each batch's statistics (and its BN
running statistics drift). This repository keeps every teacher in eval mode (the Distiller base
class enforces it), so no published OFD number (the paper's, or mdistiller's CIFAR and ImageNet
tables) was produced with exactly this behaviour: expect small differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.registry import register
from errors import UsageError

__all__ = ["OFD", "ConnectorConvBN", "distillation_loss", "feat_loss", "get_margin_from_BN"]

T = TypeVar("T")


def get_margin_from_BN(bn: nn.BatchNorm2d) -> torch.Tensor:
    """OFD's margin per channel ``[C]`` from a BN's scale and shift (computed in float64)."""
    std = bn.weight.detach().double().abs()
    mean = bn.bias.detach().double()
    ratio = mean / std
    negative_mass = 0.5 * torch.erfc(ratio / math.sqrt(2.0))  # Φ(−β/|γ|)
    density = torch.exp(-ratio**2 / 2) / math.sqrt(2 * math.pi)  # φ(β/|γ|)
    margin = torch.where(negative_mass > 0.001, mean - std * density / negative_mass, -3 * std)
    return margin.float()


def _partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The element-wise partial L2 distance ``d(s, t)`` of the module docstring."""
    target = torch.max(target, margin.to(source))
    return (source - target).pow(2) * ((source > target) | (target > 0)).to(source.dtype)


def distillation_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The original's form: the partial L2 distance summed over every element (batch included)."""
    return _partial_l2(source, target, margin).sum()


def feat_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """mdistiller's form: the same distance summed over C, H, W and averaged over the batch."""
    return _partial_l2(source, target, margin).mean(dim=0).sum()


class ConnectorConvBN(nn.Module):
    """One Conv(k×k, no bias)·BN per stage from student to teacher width (keys ``connectors.i.{0,1}``).

    Initialised as upstream: conv weights ``N(0, sqrt(2 / (k·k·C_t)))``, BN 1 / 0.
    """

    def __init__(self, s_channels: Sequence[int], t_channels: Sequence[int], kernel_size: int = 1):
        super().__init__()
        if len(s_channels) != len(t_channels):
            raise ValueError(f"unequal numbers of stages: {len(s_channels)} student, {len(t_channels)} teacher")
        self.s_channels, self.t_channels = list(s_channels), list(t_channels)
        self.connectors = nn.ModuleList([self._connector(s, t, kernel_size) for s, t in zip(s_channels, t_channels)])

    @staticmethod
    def _connector(s_channel: int, t_channel: int, kernel_size: int) -> nn.Sequential:
        conv = nn.Conv2d(s_channel, t_channel, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channel)))
        return nn.Sequential(conv, nn.BatchNorm2d(t_channel))

    def forward(self, g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


def deepest(items: Sequence[T], count: int) -> list[T]:
    """The last ``count`` items (the deepest stages)."""
    return list(items[len(items) - count:])


def teacher_bns(teacher: nn.Module, teacher_name: str) -> list[nn.BatchNorm2d]:
    """The teacher's BN before each stage's activation, or a usage error naming why there is none."""
    why = f"{type(teacher).__name__} has no get_bn_before_relu()"
    if hasattr(teacher, "get_bn_before_relu"):
        try:
            return list(teacher.get_bn_before_relu())
        except NotImplementedError as error:
            why = str(error)
    raise UsageError(f"--distill ofd takes its margins from the teacher's BatchNorm before each stage's "
                     f"activation, which teacher {teacher_name} does not expose ({why})")


@register("ofd")
class OFD(Distiller):
    """Partial L2 between connector-mapped student and teacher pre-ReLU stage maps (``-b 0.001``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=0.001)
    preact = True

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.num_stages = min(len(self.student_shapes), len(self.teacher_shapes)) - 2
        t_maps = deepest(self.teacher_shapes[1:-1], self.num_stages)
        s_maps = deepest(self.student_shapes[1:-1], self.num_stages)
        bns = teacher_bns(teacher, setup.teacher_name)
        if [bn.num_features for bn in bns] != [int(s[1]) for s in self.teacher_shapes[1:-1]]:
            raise ValueError(f"{setup.teacher_name}.get_bn_before_relu() does not match its stage maps")
        self.connectors = ConnectorConvBN([int(s[1]) for s in s_maps], [int(t[1]) for t in t_maps])
        for index, bn in enumerate(deepest(bns, self.num_stages), start=1):
            self.register_buffer(f"margin{index}", get_margin_from_BN(bn).view(1, -1, 1, 1))

    @property
    def margins(self) -> list[torch.Tensor]:
        """The margins ``[1, C, 1, 1]`` of the paired teacher stages, shallow to deep."""
        return [getattr(self, f"margin{index}") for index in range(1, self.num_stages + 1)]

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        sources = self.connectors(deepest(student.features[1:-1], self.num_stages))
        targets = deepest(teacher.features[1:-1], self.num_stages)
        total = torch.zeros((), device=sources[0].device)
        for index, (source, target, margin) in enumerate(zip(sources, targets, self.margins)):
            target = F.adaptive_avg_pool2d(target, source.shape[-2:])
            total = total + feat_loss(source, target, margin) / 2 ** (self.num_stages - index - 1)
        return {self.name: total}
