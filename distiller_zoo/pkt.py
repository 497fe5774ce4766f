"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer"
(ECCV 2018). METHODS.md §1.8.

PKT matches the conditional probability distributions that a cosine-similarity kernel induces
over the samples of a batch. On the penultimate embeddings (``feat[-1]``), for each network:

    x̂_i = x_i / (||x_i||₂ + 1e-7)            (NaNs replaced by 0)
    K_ij = (⟨x̂_i, x̂_j⟩ + 1) / 2,   P_ij = K_ij / Σ_j K_ij     (diagonal included)
    L_PKT = mean_{i,j} P_t,ij · log( (P_t,ij + 1e-7) / (P_s,ij + 1e-7) )

The last line is the paper's KL divergence between the teacher's and the student's
distributions, except that upstream (whose numbers this reproduces) averages over all ``B²``
entries instead of summing each row.
"""

from __future__ import annotations

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.registry import register

__all__ = ["PKT"]


class PKT(nn.Module):
    """Probabilistic knowledge transfer loss between two batches of embeddings."""

    eps = 1e-7

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        p_s = self.conditional_probabilities(f_s)
        p_t = self.conditional_probabilities(f_t)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()

    def conditional_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Row-stochastic ``[B, B]`` matrix of cosine similarities mapped to [0, 1]."""
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + self.eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        kernel = (x @ x.t() + 1.0) / 2.0
        return kernel / kernel.sum(1, keepdim=True)


@register("pkt")
class PKTDistiller(Distiller):
    """Probabilistic knowledge transfer on the penultimate embeddings (``-b 30000``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=30000.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = PKT()

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.features[-1], teacher.features[-1])}
