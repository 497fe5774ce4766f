"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer" (ICLR 2017). METHODS.md §1.3.

For every pair of intermediate maps (``feat[1:-1]``, paired in order and truncated to the
shorter list), after pooling the larger map to the smaller's size (METHODS.md §0.3):

    a(f) = normalize( flatten_HW( mean_C( f^p ) ) ) ∈ R^{B×HW},  p = 2
    L_pair = mean_{B×HW} ( a(f_s) − a(f_t) )²,    L_AT = Σ_pairs L_pair

This is upstream's form of the paper's Eq. (2): the squared difference of the normalised
attention vectors, averaged over batch and positions (the paper takes its p-norm). The channel
mean (the paper sums) does not matter after normalisation; ``f^p`` is the plain power, without
the absolute value, as upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import align_spatial
from distiller_zoo.registry import register

__all__ = ["AT", "Attention"]


class Attention(nn.Module):
    """Attention transfer between lists of maps; returns one loss per (student, teacher) pair."""

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = align_spatial(f_s, f_t)
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f: torch.Tensor) -> torch.Tensor:
        """The normalised spatial attention vector ``[B, H·W]`` of a map ``[B, C, H, W]``."""
        return F.normalize(f.pow(self.p).mean(1).flatten(1), dim=1)


@register("attention", "at")
class AT(Distiller):
    """Attention transfer on every intermediate map pair (``-b 1000``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1000.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = Attention(p=2)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.criterion(student.features[1:-1], teacher.features[1:-1])
        return {self.name: torch.stack(losses).sum()}
