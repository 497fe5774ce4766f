"""WSLD: Zhou, Song, Chen, Zhou, Wang, Yuan and Zhang, "Rethinking Soft Labels for Knowledge
Distillation: A Bias-Variance Tradeoff Perspective" (ICLR 2021).

Weighted soft labels: each sample's soft cross-entropy is weighted by how much worse the student
does on its label than the teacher (upstream ``bellymonster/Weighted-Soft-Label-Distillation``
``WSLDistiller``, copied as ``WSLD.py`` into the distillers repository's CIFAR tree). With
``CE_s``, ``CE_t`` the per-sample cross-entropies of the *detached* student and teacher logits
with the label at temperature 1, and ``p^T = softmax(z/T)``:

* ``w_b = 1 − exp(−max(CE_s[b] / (CE_t[b] + 1e-7), 0))`` (no gradient; close to 1 where the
  student lags the teacher, close to 0 where it is ahead);
* ``L_soft = T² · (1/B) Σ_b w_b · (−Σ_c p^T_t[b, c] · log p^T_s[b, c])`` (a cross-entropy, not a
  KL: the teacher's entropy is not subtracted, which changes the value and not the gradient);
* upstream's criterion returns ``CE(z_s, y) + α · L_soft`` with ``α = 2.5`` and ``T = 2``.

Here the ``cls`` term is that CE and the method's term ``wsld`` is ``L_soft``, so ``-r 1 -a 0
-b 2.5`` is upstream's loss (ImageNet ResNet34→ResNet18 72.04, ResNet50→MobileNetV1 71.52);
``--wsld_temp`` is ``T`` (2). :class:`WSLDLoss` keeps the distillers call ``WSLDLoss(opt)(fc_t,
fc_s, label)`` (teacher first) and returns the full upstream loss.

Upstream disagreements: the distillers copy reads its temperature from ``opt.nce_t`` (whose
default there, 0.07, is CRD's, although a comment says 2) and its class count from
``opt.dataset`` (CIFAR only); it is not wired into that repository's ``train_student.py``. The
original hard-codes ``T = 2``. This file reads ``opt.nce_t`` as the distillers copy does, the
Distiller passes ``--wsld_temp`` there, and the class count is taken from the logits so that any
data set works. Both versions' "label smoothing" is ``cross_entropy_with_label_smoothing`` at
its default smoothing 0 (distillers) or plain cross-entropy (the original's config), i.e. the
ordinary CE. Logits only; no trainable parts.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.registry import register

__all__ = ["WSLD", "WSLDLoss", "cross_entropy_with_label_smoothing"]

WSLD_TEMP = argument("--wsld_temp", type=float, default=2.0, help="WSLD temperature T of the weighted soft labels")
WSLD_ALPHA = 2.5  # the soft term's weight inside upstream's criterion (the Distiller's -b)


def cross_entropy_with_label_smoothing(pred: torch.Tensor, target: torch.Tensor,
                                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Batch-mean cross-entropy with the one-hot target mixed with the uniform distribution:
    ``(1 − ε)·onehot(y) + ε/C`` (ProxylessNAS's form, as WSLD imports it)."""
    n_classes = pred.shape[1]
    soft_target = torch.zeros_like(pred).scatter_(1, target.unsqueeze(1), 1)
    soft_target = soft_target * (1 - label_smoothing) + label_smoothing / n_classes
    return torch.mean(torch.sum(-soft_target * F.log_softmax(pred, dim=1), 1))


class WSLDLoss(nn.Module):
    """``WSLDLoss(opt)(fc_t, fc_s, label)``: ``CE(fc_s, label) + 2.5 · L_soft`` at ``T = opt.nce_t``."""

    def __init__(self, opt: argparse.Namespace):
        super().__init__()
        self.T = opt.nce_t
        self.alpha = WSLD_ALPHA

    def sample_weights(self, fc_t: torch.Tensor, fc_s: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``[B, 1]``: ``1 − exp(−max(CE_s / (CE_t + 1e-7), 0))`` from the detached logits at T = 1."""
        ce_s = F.cross_entropy(fc_s.detach(), label, reduction="none").unsqueeze(1)
        ce_t = F.cross_entropy(fc_t.detach(), label, reduction="none").unsqueeze(1)
        ratio = torch.clamp(ce_s / (ce_t + 1e-7), min=0.0)
        return 1 - torch.exp(-ratio)

    def soft_loss(self, fc_t: torch.Tensor, fc_s: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``T² · mean_b(w_b · H(softmax(fc_t/T), softmax(fc_s/T)))``: the weighted soft-label term."""
        p_t = F.softmax(fc_t / self.T, dim=1)
        soft_ce = -torch.sum(p_t * F.log_softmax(fc_s / self.T, dim=1), 1, keepdim=True)
        return self.T**2 * torch.mean(self.sample_weights(fc_t, fc_s, label) * soft_ce)

    def forward(self, fc_t: torch.Tensor, fc_s: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        hard_loss = cross_entropy_with_label_smoothing(fc_s, label)
        return hard_loss + self.alpha * self.soft_loss(fc_t, fc_s, label)


@register("wsld")
class WSLD(Distiller):
    """Weighted soft labels; ``-r 1 -a 0 -b 2.5`` at ``--wsld_temp 2`` (the original's loss)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=WSLD_ALPHA)
    uses_features = False
    arguments = (WSLD_TEMP,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, wsld_temp: float):
        super().__init__(student, teacher, setup)
        self.criterion = WSLDLoss(argparse.Namespace(nce_t=wsld_temp))

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion.soft_loss(teacher.logits, student.logits, batch.targets)}
