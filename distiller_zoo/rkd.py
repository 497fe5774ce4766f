"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019). METHODS.md §1.7.

RKD transfers the *relations* between the samples of a batch rather than the samples' outputs.
On the flattened penultimate embeddings ``x_i`` (``feat[-1]``):

* distance-wise (the paper's ψ_D, normalised by its mean μ over distinct pairs):
  ``D[i,j] = sqrt(max(||x_i||² + ||x_j||² − 2⟨x_i,x_j⟩, 1e-12))``, ``D[i,i] = 0``, divided by the
  mean of its strictly positive entries; ``L_d = smoothL1(D_s, D_t)``;
* angle-wise (ψ_A): ``u_ij = normalize(x_j − x_i)``, ``A[i,j,k] = ⟨u_ij, u_ik⟩`` over all
  ordered triples (``B×B×B``); ``L_a = smoothL1(A_s, A_t)``;

    L_RKD = w_d·L_d + w_a·L_a,   w_d = 25, w_a = 50      (smooth L1: Huber, threshold 1, mean)

The teacher's relations are computed without gradient. Because the clamp keeps every
off-diagonal distance at least 1e-6, the strictly positive entries are exactly the
off-diagonal ones. A batch of one sample has none (upstream's mean is then NaN); its distance
matrix is left unnormalised (all zeros), so its loss is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.registry import register

__all__ = ["RKD", "RKDLoss"]


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances ``[B, B]`` between the rows of ``e``, squared distances clamped at eps,
    with a zero diagonal."""
    squared_norms = e.pow(2).sum(1)
    squared = (squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    diagonal = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return squared.sqrt().masked_fill(diagonal, 0.0)


def normalized_distances(e: torch.Tensor) -> torch.Tensor:
    """``pairwise_distances`` divided by the mean of the off-diagonal (strictly positive) entries."""
    distances = pairwise_distances(e)
    n = e.shape[0]
    if n < 2:
        return distances
    return distances / (distances.sum() / (n * (n - 1)))


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """The flattened cosines ``A[i,j,k] = ⟨normalize(e_j − e_i), normalize(e_k − e_i)⟩``."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j − e_i
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


class RKDLoss(nn.Module):
    """Distance-wise plus angle-wise relational loss between two batches of embeddings."""

    def __init__(self, w_d: float = 25, w_a: float = 50):
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        student = f_s.flatten(1)
        teacher = f_t.flatten(1)
        with torch.no_grad():
            t_distances = normalized_distances(teacher)
            t_angles = triplet_angles(teacher)
        loss_d = F.smooth_l1_loss(normalized_distances(student), t_distances)
        loss_a = F.smooth_l1_loss(triplet_angles(student), t_angles)
        return self.w_d * loss_d + self.w_a * loss_a


@register("rkd")
class RKD(Distiller):
    """Relational KD on the penultimate embeddings (``-b 1``; w_d 25, w_a 50 inside the loss)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = RKDLoss(w_d=25, w_a=50)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.features[-1], teacher.features[-1])}
