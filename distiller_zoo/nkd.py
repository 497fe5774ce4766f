"""NKD: Yang, Zeng, Li, Zhang, Yuan and Li, "From Knowledge Distillation to Self-Knowledge Distillation:
A Unified Approach with Normalized Loss and Customized Soft Labels" (ICCV 2023).

Normalized KD splits the soft label at the ground-truth class ``y`` (upstream ``yzd-v/cls_KD``
``NKDLoss``). With ``S = softmax(z_s)``, ``T = softmax(z_t)`` at temperature 1, and ``Ŝ``, ``T̂``
the softmax at temperature ``λ`` of the logits *with column y removed* (the non-target
distributions renormalised over the other ``C − 1`` classes):

* target term: ``L_t = −(1/B) Σ_b T[b, y_b] · log S[b, y_b]`` (the teacher's target probability
  is a constant weight, detached);
* non-target term: ``L_n = −γ · λ² · (1/B) Σ_b Σ_{c ≠ y_b} T̂[b, c] · log Ŝ[b, c]``;
* ``L_NKD = L_t + L_n``.

This is the *fixed* form. Before upstream's 2023-10-10 commit the mask that removes column
``y`` was built as ``ones.scatter_(1, label, 1)`` (all ones), so the "non-target" part kept the
target class and was plain soft cross-entropy over all classes; the fix scatters 0. The paper's
formula is the fixed one, and so is this file.

Flags: ``--nkd_temp`` (λ, 1) and ``--nkd_gamma`` (γ, 1.5), upstream's defaults and its ImageNet
ResNet34→ResNet18 config (71.96); its CIFAR-100 config uses λ 3, γ 3.5. Upstream adds the loss
to the student's cross-entropy at weight 1: ``-r 1 -a 0 -b 1``. Soft (2-D) labels are reduced
to their arg-max, as upstream does for mixup/cutmix targets. Logits only; no trainable parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.registry import register

__all__ = ["NKD", "NKDLoss"]

NKD_TEMP = argument("--nkd_temp", type=float, default=1.0, help="NKD temperature λ of the non-target term")
NKD_GAMMA = argument("--nkd_gamma", type=float, default=1.5, help="NKD weight γ of the non-target term")


def _drop_column(x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``x [N, C]`` without the column ``label[n]`` of each row: ``[N, C − 1]``, order kept."""
    keep = torch.ones_like(x).scatter_(1, label, 0).bool()
    return x[keep].reshape(x.shape[0], -1)


class NKDLoss(nn.Module):
    """``NKDLoss(temp=1.0, gamma=1.5)(logit_s, logit_t, gt_label)``: target + normalised non-target terms."""

    def __init__(self, temp: float = 1.0, gamma: float = 1.5):
        super().__init__()
        self.temp = temp
        self.gamma = gamma

    def forward(self, logit_s: torch.Tensor, logit_t: torch.Tensor, gt_label: torch.Tensor) -> torch.Tensor:
        label = gt_label.argmax(dim=1, keepdim=True) if gt_label.dim() > 1 else gt_label.reshape(-1, 1)

        log_s = F.log_softmax(logit_s, dim=1)
        p_t = F.softmax(logit_t, dim=1)
        target_log_s = log_s.gather(1, label)
        target_p_t = p_t.gather(1, label).detach()
        loss_target = -(target_p_t * target_log_s).mean()

        rest_log_s = F.log_softmax(_drop_column(logit_s, label) / self.temp, dim=1)
        rest_p_t = F.softmax(_drop_column(logit_t, label) / self.temp, dim=1)
        loss_non_target = -self.gamma * self.temp**2 * (rest_p_t * rest_log_s).sum(dim=1).mean()
        return loss_target + loss_non_target


@register("nkd")
class NKD(Distiller):
    """NKD on the logits; ``-r 1 -a 0 -b 1`` (λ and γ by ``--nkd_temp``/``--nkd_gamma``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    uses_features = False
    arguments = (NKD_TEMP, NKD_GAMMA)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, nkd_temp: float,
                 nkd_gamma: float):
        super().__init__(student, teacher, setup)
        self.criterion = NKDLoss(nkd_temp, nkd_gamma)

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.logits, teacher.logits, batch.targets)}
