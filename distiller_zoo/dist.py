"""DIST: Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022).

KD with the KL divergence replaced by correlation losses, so the student matches the *relations*
of the teacher's predictions rather than their exact values. With ``Y = softmax(Z/τ)`` row-wise
(``[B, C]``, for student and teacher) and ``ρ`` the Pearson correlation of two vectors
(``cos(u − ū, v − v̄)``, with ``1e-8`` added to the norm product):

* inter-class relation: ``L_inter = τ² · (1 − (1/B) Σ_b ρ(Y_s[b, :], Y_t[b, :]))`` (each sample's
  class distribution);
* intra-class relation: ``L_intra = τ² · (1 − (1/C) Σ_c ρ(Y_s[:, c], Y_t[:, c]))`` (each class's
  probabilities across the batch);
* ``L_DIST = β · L_inter + γ · L_intra``.

This is the form of the authors' classification code (``image_classification_sota``
``lib/models/losses/dist_kd.py``), the one the published numbers come from; the
segmentation copy in ``DIST_KD`` has no temperature (τ = 1, no τ² factor).

Recipe: CIFAR-100 ``-r 1 -a 0 -b 2`` with ``--dist_tau 4 --dist_beta 1 --dist_gamma 1`` (the
authors' CIFAR setting: τ = 4, cross-entropy at 1 and ``DIST(beta=1, gamma=1, tau=4)`` at 2, i.e.
``2·L_inter + 2·L_intra``); ImageNet ``-r 1 -a 0 -b 1 --dist_tau 1`` (their ``kd_method dist``,
``DIST(beta=1, gamma=1, tau=1)``). The term ``dist`` is
weighted by ``-b``; ``--dist_beta``/``--dist_gamma`` are β and γ inside it. ``--logit_stand``
z-scores both networks' logits before they are softened (Sun et al. 2024), here and in the ``kd``
term. Logits only; no trainable parts.
"""

from __future__ import annotations

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import kd_criterion, normalize
from distiller_zoo.flags import LOGIT_STAND
from distiller_zoo.registry import register

__all__ = ["DIST", "DISTDistiller", "inter_class_relation", "intra_class_relation", "pearson_correlation"]

DIST_BETA = argument("--dist_beta", type=float, default=1.0, help="DIST weight β of the inter-class relation")
DIST_GAMMA = argument("--dist_gamma", type=float, default=1.0, help="DIST weight γ of the intra-class relation")
DIST_TAU = argument("--dist_tau", type=float, default=4.0, help="DIST temperature τ (4 on CIFAR, 1 on ImageNet)")


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise cosine of two ``[N, D]`` matrices, ``eps`` added to the product of the norms."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation: the cosine of the rows minus their means."""
    return cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), eps)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """``1 −`` the mean over samples of the correlation of their class distributions."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """``1 −`` the mean over classes of the correlation of their probabilities across the batch."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


class DIST(nn.Module):
    """``DIST(beta=1.0, gamma=1.0, tau=1.0)(z_s, z_t)``: ``β·L_inter + γ·L_intra`` on ``softmax(z/τ)``."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        y_s = (z_s / self.tau).softmax(dim=1)
        y_t = (z_t / self.tau).softmax(dim=1)
        inter_loss = self.tau**2 * inter_class_relation(y_s, y_t)
        intra_loss = self.tau**2 * intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss


@register("dist")
class DISTDistiller(Distiller):
    """DIST on the logits; ``-r 1 -a 0 -b 2`` with τ = 4, β = γ = 1 (the authors' CIFAR config)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=2.0)
    uses_features = False
    arguments = (DIST_BETA, DIST_GAMMA, DIST_TAU, LOGIT_STAND)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, dist_beta: float,
                 dist_gamma: float, dist_tau: float, logit_stand: bool | None):
        super().__init__(student, teacher, setup)
        self.logit_stand = bool(logit_stand)
        self.kd_loss = kd_criterion(setup.kd_T, logit_stand)
        self.criterion = DIST(dist_beta, dist_gamma, dist_tau)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        z_s, z_t = student.logits, teacher.logits
        if self.logit_stand:
            z_s, z_t = normalize(z_s), normalize(z_t)
        return {self.name: self.criterion(z_s, z_t)}
