"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019). METHODS.md §1.5.

Both penultimate embeddings (``feat[-1]``) pass through a trainable ``LinearEmbed`` to
``--feat_dim`` (128) dimensions, giving ``E_s`` and ``E_t``. With ``δ = |E_s − E_t|``:

    L_CC = (1/(B−1)) Σ_{i=0}^{B−2} Σ_k δ[i,k]·δ[i+1,k]

Choices where upstream differs from the paper (METHODS.md §5 item 4):

* This is the author-provided formula RepDistiller runs, whose published numbers it gave: a
  product of the differences of *consecutive samples in batch order*, not the paper's
  ``||ψ(F_t) − ψ(F_s)||²`` over correlation matrices.
* The teacher-side embedding is trainable too (it sits in the optimiser upstream and receives
  gradients through its own weights), so both embeddings are main-stage parameters.
* A batch of one sample has no consecutive pair: upstream's mean over zero pairs is NaN, which
  would stop a run on a final one-sample batch; here the loss is 0 for it. Every batch of two or
  more samples gives upstream's value.
"""

from __future__ import annotations

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import LinearEmbed
from distiller_zoo.flags import FEAT_DIM
from distiller_zoo.registry import register

__all__ = ["CC", "Correlation", "LinearEmbed"]


class Correlation(nn.Module):
    """CC's consecutive-sample correlation of the embedding differences (author-provided form)."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        delta = (f_s - f_t).abs()
        n_pairs = max(delta.shape[0] - 1, 1)
        return (delta[:-1] * delta[1:]).sum() / n_pairs


@register("correlation", "cc")
class CC(Distiller):
    """Correlation congruence on embedded penultimate features (``-b 0.02``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=0.02)
    arguments = (FEAT_DIM,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, feat_dim: int):
        super().__init__(student, teacher, setup)
        self.embed_s = LinearEmbed(self.student_shapes[-1][1:].numel(), feat_dim)
        self.embed_t = LinearEmbed(self.teacher_shapes[-1][1:].numel(), feat_dim)
        self.criterion = Correlation()

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(self.embed_s(student.features[-1]),
                                          self.embed_t(teacher.features[-1]))}
