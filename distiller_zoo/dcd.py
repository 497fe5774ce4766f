"""DCD: Giakoumoglou and Stathaki, "Discriminative and Consistent Representation Distillation"
(first released as "ICD"). METHODS.md §1.17.

In-batch contrast between student and teacher embeddings, ``v = normalize(Linear(feat[-1]))``:

    ``Λ = τ · v_s v_tᵀ + b``,  ``τ = clamp(exp(θ_τ), 0, max_tau)``   (``[B, B]``)
    ``L_c = CE(Λ, diag)``                       (row b: student b must pick teacher b)
    ``L_inv = KL(p2 ‖ p1)``, batch mean, ``p1 = log_softmax(Λ, 1)``, ``p2 = softmax(Λ, 0)ᵀ``
    ``L_DCD = L_c + α · L_inv``                  (α = 0.5, max_tau = 10)

``τ`` multiplies the logits (an inverse temperature, ≈ e at init). ``p2`` is not detached.

Choices (METHODS.md §5 item 8): ``θ_τ`` and ``b`` are **trained**, with the student's weight
decay, as in the code behind the published tables (distillers-imagenet HEAD silently leaves
them out of the optimiser). Upstream's fixed-temperature option is not offered: no upstream
command line selects it.
DCD runs with full batches only (the recipe drops the last partial batch).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch, DataNeeds
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.flags import FEAT_DIM
from distiller_zoo.registry import register

__all__ = ["DCD", "DCDLoss", "LearnableParams"]


class LearnableParams(nn.Module):
    """Holder of DCD's two scalars: ``tau`` (θ_τ, the log of the logit scale) and the bias ``b``."""

    def __init__(self, init_tau: float = 1.0, init_b: float = 0.0):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(init_tau)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))


class DCDLoss(nn.Module):
    """DCD criterion; reads ``opt.s_dim, t_dim, feat_dim``.

    State-dict keys ``params.tau``, ``params.b``, ``embed_s.*``, ``embed_t.*``.
    """

    def __init__(
        self,
        opt: argparse.Namespace,
        max_tau: float = 10.0,
        alpha: float = 0.5,
        init_tau: float = 1.0,
        init_b: float = 0.0,
    ):
        super().__init__()
        self.max_tau = max_tau
        self.alpha = alpha
        self.params = LearnableParams(init_tau, init_b)
        self.embed_s = nn.Linear(opt.s_dim, opt.feat_dim)
        self.embed_t = nn.Linear(opt.t_dim, opt.feat_dim)

    def logits(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """``Λ = τ · v_s v_tᵀ + b``, ``[B, B]``: row = student sample, column = teacher sample."""
        v_s = F.normalize(self.embed_s(f_s), dim=1)
        v_t = F.normalize(self.embed_t(f_t), dim=1)
        scale = self.params.tau.exp().clamp(0, self.max_tau)
        return v_s @ v_t.t() * scale + self.params.b

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        logits = self.logits(f_s, f_t)
        targets = torch.arange(logits.shape[0], device=logits.device)
        contrastive = F.cross_entropy(logits, targets)
        p1 = F.log_softmax(logits, dim=1)
        p2 = F.softmax(logits, dim=0).t()
        invariance = F.kl_div(p1, p2, reduction="batchmean")
        return contrastive + self.alpha * invariance


@register("dcd", "icd")
class DCD(Distiller):
    """DCD on the penultimate embeddings; ``-r 1 -a 0 -b 1`` (DCD+KD: ``-a 1``), full batches."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    arguments = (FEAT_DIM,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, feat_dim: int):
        super().__init__(student, teacher, setup)
        self.criterion = DCDLoss(argparse.Namespace(
            s_dim=self.student_shapes[-1][1], t_dim=self.teacher_shapes[-1][1], feat_dim=feat_dim))

    @classmethod
    def data_needs(cls, **_: object) -> DataNeeds:
        return DataNeeds(drop_last=True)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.features[-1], teacher.features[-1])}
