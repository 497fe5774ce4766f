"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019).
METHODS.md §1.6.

VID maximises a variational lower bound on the mutual information between teacher and student
maps: the teacher map ``t`` is modelled as a Gaussian whose mean ``μ(s)`` is regressed from the
student map and whose variance ``σ²_c`` is one learned value per channel, independent of the
input (the paper's heteroscedastic mean, homoscedastic variance). For each pair of
intermediate maps (``feat[1:-1]``, paired in order), after pooling the larger map to the
smaller's size (METHODS.md §0.3), the loss is the negative log-likelihood without its constant:

    σ²_c = softplus(α_c) + ε,   ε = 1e-5
    L_pair = mean_{B·C·H·W} ½ ( (μ(s) − t)² / σ²_c + log σ²_c ),     L_VID = Σ_pairs L_pair

``μ`` is three 1×1 convolutions without bias (C_s→C_t→C_t→C_t) with ReLUs between, and ``α_c``
(``log_scale``) starts at ``log(exp(5 − ε) − 1)`` so that the initial variance is exactly 5. One
head per pair, built as ``VIDLoss(C_s, C_t, C_t)``; all heads are trainable. Upstream writes the
softplus as ``log(1 + exp(α))``; ``F.softplus`` is the same function without its overflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import align_spatial
from distiller_zoo.registry import register

__all__ = ["VID", "VIDLoss"]


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class VIDLoss(nn.Module):
    """One VID head: the mean regressor and per-channel variance for one (student, teacher) pair."""

    def __init__(self, num_input_channels: int, num_mid_channel: int, num_target_channels: int,
                 init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(num_input_channels, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_target_channels),
        )
        # The inverse of softplus at (init_pred_var − eps), so that σ² starts at init_pred_var.
        initial_scale = math.log(math.expm1(init_pred_var - eps))
        self.log_scale = nn.Parameter(torch.full((num_target_channels,), initial_scale))
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = align_spatial(input, target)
        pred_mean = self.regressor(input)
        pred_var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target).pow(2) / pred_var + pred_var.log())
        return neg_log_prob.mean()


@register("vid")
class VID(Distiller):
    """Variational information distillation on every intermediate map pair (``-b 1``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.vid_heads = nn.ModuleList(
            VIDLoss(s_shape[1], t_shape[1], t_shape[1])
            for s_shape, t_shape in zip(self.student_shapes[1:-1], self.teacher_shapes[1:-1])
        )

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = [head(f_s, f_t) for head, f_s, f_t
                  in zip(self.vid_heads, student.features[1:-1], teacher.features[1:-1])]
        return {self.name: torch.stack(losses).sum()}
