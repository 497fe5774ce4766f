"""FSP: Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning" (CVPR 2017), Eq. 1–2. METHODS.md §1.11.

For every two consecutive maps ``a = feat[i]``, ``b = feat[i+1]`` of ``feat[:-1]`` (stem
included), after pooling the larger to the smaller's height (§0.3), the "flow of solution
procedure" matrix is

    G[n, c_b, c_a] = (1 / HW) Σ_hw b[n, c_b, hw] · a[n, c_a, hw]          ([B, C_{i+1}, C_i])

and the loss of a pair is ``mean((G_s − G_t)²)``; the criterion returns one loss per pair.
The student and teacher must have the same channel count at every tapped position (otherwise
their matrices differ in shape): FSP works only within a family at equal width (resnet110 →
resnet20, resnet32x4 → resnet8x4, vgg13 → vgg8, wrn_40_2 → wrn_16_2), METHODS.md §5 item 5.

Two stages, as RepDistiller runs them (METHODS.md §5 item 2): the **init stage**
(``--init_epochs`` epochs at the run's learning rate, constant) trains the student's feature
modules (``get_feat_modules()``, everything but the classifier) on the FSP loss alone, the rest
of the student in eval mode; the **main stage** has no FSP term (``-b`` has no effect).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import DistillSetup, Outputs, Weights
from distiller_zoo.common import align_spatial, channel_mismatch
from distiller_zoo.init_only import InitOnlyDistiller
from distiller_zoo.registry import register

__all__ = ["FSP", "FSPDistiller"]


class FSP(nn.Module):
    """FSP-matrix matching over consecutive map pairs (RepDistiller ``FSP``).

    ``s_shapes``/``t_shapes`` (the shapes of the maps passed to ``forward``) are taken as
    upstream's constructor takes them; the channel counts must agree at every position, which
    :meth:`FSPDistiller.pairing_problem` checks before the criterion is built.
    """

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]):
        super().__init__()

    @staticmethod
    def fsp_matrices(g: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``G`` of each consecutive pair of maps, ``[B, C_{i+1}, C_i]``."""
        matrices = []
        for bottom, top in pairwise(g):
            bottom, top = align_spatial(bottom, top)
            bottom, top = bottom.flatten(2), top.flatten(2)
            matrices.append(torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2])
        return matrices

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [
            (fsp_s - fsp_t).pow(2).mean()
            for fsp_s, fsp_t in zip(self.fsp_matrices(g_s), self.fsp_matrices(g_t))
        ]


@register("fsp")
class FSPDistiller(InitOnlyDistiller):
    """FSP: an init stage on the FSP loss, then plain training (``-a 0 -b 50``, β unused)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=50.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, init_epochs: int):
        super().__init__(student, teacher, setup, init_epochs=init_epochs)
        self.criterion = FSP(self.student_shapes[:-1], self.teacher_shapes[:-1])

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        problem = channel_mismatch(student_shapes[:-1], teacher_shapes[:-1])
        if problem is None:
            return None
        return (f"FSP needs equal channel counts at every map, but {problem}; it works only for a student "
                "and teacher of one family and width (e.g. resnet110/resnet56 -> resnet20, "
                "resnet32x4 -> resnet8x4, vgg13 -> vgg8, wrn_40_2 -> wrn_16_2)")

    def init_terms(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.criterion(student.features[:-1], teacher.features[:-1])
        return {self.name: torch.stack(losses).sum()}
