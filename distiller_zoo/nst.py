"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
(arXiv 1707.01219, 2017). METHODS.md §1.12.

NST matches the distributions of neuron selectivity patterns: each channel of a map is one
sample (its vector of responses over the H·W positions), and the squared maximum mean
discrepancy between the student's and the teacher's channel sets is minimised. For each pair of
intermediate maps (``feat[1:-1]``, paired in order), after pooling the larger map to the
smaller's size (METHODS.md §0.3), every channel vector is L2-normalised over its positions
(eps 1e-12) and, with the paper's polynomial kernel of degree 2 (``k(u,v) = ⟨u,v⟩²``, c = 0):

    L_pair = mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c') − 2·mean_{c,c'} k(t_c, s_c')

each mean over the batch and both channel indices; the teacher–teacher term is a constant
(detached). ``L_NST = Σ_pairs L_pair``. The kernels are computed as batched matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import align_spatial
from distiller_zoo.registry import register

__all__ = ["NST", "NSTLoss"]


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``k(a_i, b_j) = ⟨a_i, b_j⟩²`` for channel sets ``a [B, C_a, N]``, ``b [B, C_b, N]``.

    Returns ``[B, C_b, C_a]``, upstream's orientation (only the means are used).
    """
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


class NSTLoss(nn.Module):
    """Neuron selectivity transfer between lists of maps; one squared MMD per (student, teacher) pair."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = align_spatial(f_s, f_t)
        f_s = F.normalize(f_s.flatten(2), dim=2)
        f_t = F.normalize(f_t.flatten(2), dim=2)
        return (poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean()
                - 2 * poly_kernel(f_s, f_t).mean())


@register("nst")
class NST(Distiller):
    """Neuron selectivity transfer on every intermediate map pair (``-b 50``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=50.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = NSTLoss()

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.criterion(student.features[1:-1], teacher.features[1:-1])
        return {self.name: torch.stack(losses).sum()}
