"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019). METHODS.md §1.4.

With ``F ∈ R^{B×(C·H·W)}`` the flattened last map (``feat[-2]``) of each network, the batch's
pairwise similarities ``G = F Fᵀ`` are L2-normalised row by row (eps 1e-12) into ``Ĝ`` and

    L_SP = (1/B²) Σ_{i,j} (Ĝ_t − Ĝ_s)²_{ij}          (the paper's Eq. (4), one layer pair)

The criterion takes lists of maps and returns one loss per pair, as upstream; the Distiller
passes only the last maps. Upstream's per-pair loss is a 1-element tensor; here it is a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.registry import register

__all__ = ["SP", "Similarity"]


class Similarity(nn.Module):
    """Similarity-preserving loss between lists of maps; one loss per (student, teacher) pair."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        batch_size = f_s.shape[0]
        g_s = F.normalize(f_s.flatten(1) @ f_s.flatten(1).t(), dim=1)
        g_t = F.normalize(f_t.flatten(1) @ f_t.flatten(1).t(), dim=1)
        return (g_t - g_s).pow(2).sum() / batch_size**2


@register("similarity", "sp")
class SP(Distiller):
    """Similarity preservation on the last feature map (``-b 3000``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=3000.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = Similarity()

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.criterion([student.features[-2]], [teacher.features[-2]])
        return {self.name: torch.stack(losses).sum()}
