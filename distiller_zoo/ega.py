"""EGA: Ma, Chen and Akata, "Distilling Knowledge from Self-Supervised Teacher by Embedding Graph
Alignment" (BMVC 2022), in the form the RRD/DCD authors ship in distillers' CIFAR tree
(``cifar/distillers/EGA.py``).

The batch's student and teacher embeddings (``feat[-1]``, ``[B, d]`` each, equal widths) are
stacked into ``X = [f_s; f_t] ∈ R^{2B×d}`` and their Pearson correlation matrix is taken over the
feature dimension (rows centred, divided by their standard deviations; no epsilon, as upstream).
Its blocks are two graphs over the batch and the cross-correlations of their nodes:

    C = corr(X) = [[E_s, N], [Nᵀ, E_t]]
    L_EGA = w_node · ‖N − I‖_F + w_edge · ‖E_t − E_s‖_F,    w_node = 1, w_edge = 0.3

so each student embedding is pulled towards its own teacher embedding (and away from the
others'), and the student's instance-instance correlations towards the teacher's. The norms are
Frobenius norms, not squared, as upstream (``torch.norm(·, 2)`` of a matrix).

Upstream's ``forward(ft, fs)`` names its arguments teacher first, but distillers'
``train_student.py`` passes the student first; the loss is symmetric in its two arguments (the
swap transposes ``N`` and exchanges the two graphs), so ``EGA()(f_s, f_t)`` here is exactly that
call. The weights are ``--ega_node_weight`` and ``--ega_edge_weight`` (the EGA authors' ``-node``
and ``-edge``, defaults 1 and 0.3 as in both codes). ``-r 1 -a 0 -b 1``: the EGA README's
defaults; distillers' scripts give no EGA line.
"""

from __future__ import annotations

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.registry import register

__all__ = ["EGA", "EGADistiller", "pearson_correlation"]

EGA_NODE_WEIGHT = argument("--ega_node_weight", type=float, default=1.0,
                           help="EGA: weight of the node term ‖N − I‖ (the EGA authors' -node)")
EGA_EDGE_WEIGHT = argument("--ega_edge_weight", type=float, default=0.3,
                           help="EGA: weight of the edge term ‖E_t − E_s‖ (the EGA authors' -edge)")


def pearson_correlation(m: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between the rows of ``m`` ``[n, d]`` (upstream's ``PCC``), ``[n, n]``."""
    centred = m - m.mean(dim=1, keepdim=True)
    covariance = centred @ centred.t() / (m.shape[1] - 1)
    std = covariance.diagonal().sqrt()
    return covariance / std[:, None] / std[None, :]


class EGA(nn.Module):
    """Embedding graph alignment loss, called ``(f_s, f_t)`` on ``[B, d]`` embeddings of equal width."""

    def __init__(self, node_weight: float = 1.0, edge_weight: float = 0.3):
        super().__init__()
        self.node_weight = node_weight
        self.edge_weight = edge_weight

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        correlation = pearson_correlation(torch.cat([f_s, f_t], dim=0))
        n = f_s.shape[0]
        edges_s, edges_t, nodes = correlation[:n, :n], correlation[n:, n:], correlation[:n, n:]
        identity = torch.eye(n, device=nodes.device, dtype=nodes.dtype)
        loss_node = torch.linalg.matrix_norm(nodes - identity)
        loss_edge = torch.linalg.matrix_norm(edges_t - edges_s)
        return self.node_weight * loss_node + self.edge_weight * loss_edge


@register("ega")
class EGADistiller(Distiller):
    """EGA on the pooled embeddings ``feat[-1]`` (``-b 1``); nothing trainable besides the student."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    arguments = (EGA_NODE_WEIGHT, EGA_EDGE_WEIGHT)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *,
                 ega_node_weight: float, ega_edge_weight: float):
        super().__init__(student, teacher, setup)
        self.criterion = EGA(ega_node_weight, ega_edge_weight)

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        d_s, d_t = int(student_shapes[-1][1]), int(teacher_shapes[-1][1])
        if d_s != d_t:
            return (f"EGA correlates the stacked student and teacher embeddings, so their widths must agree: "
                    f"the student's is {d_s}, the teacher's {d_t}")
        return None

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.features[-1], teacher.features[-1])}
