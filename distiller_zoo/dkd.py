"""DKD: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation" (CVPR 2022). METHODS.md §1.22.

KD split into a target-class part and a non-target part that are weighted separately
(paper eq. 7, mdistiller's form). With ``p = softmax(z/T)`` and ``y`` the label:

* TCKD: ``b = [p_y, 1 − p_y]`` (the target mass and the merged non-target mass);
  ``TCKD = KL(b_t ‖ b_s) · T²``, summed over the two bins, batch mean, with the log taken of
  the merged student probabilities;
* NCKD: ``p̂ = softmax(z/T − 1000·onehot(y))`` (the distribution over non-target classes);
  ``NCKD = KL(p̂_t ‖ p̂_s) · T²``, batch mean;
* ``L_DKD = min(epoch / warmup, 1) · (α·TCKD + β·NCKD)`` (linear warm-up; none if warmup ≤ 0).

The temperature is ``--kd_T`` (4 on CIFAR); α, β, warm-up are ``--dkd_alpha 1``,
``--dkd_beta 8``, ``--dkd_warmup 20`` (mdistiller's CIFAR defaults; its per-pair β values are
in METHODS.md §1.22). ``epoch`` is the 1-indexed epoch the driver passes to
:meth:`~distiller_zoo.base.Distiller.set_epoch`, as mdistiller counts. The term ``dkd`` is
weighted by ``-b``; DKD's own CE is the ``cls`` term (``-r 1``).

``--logit_stand`` (Sun et al., CVPR 2024) z-scores both networks' logits before they are
softened (:func:`~distiller_zoo.common.normalize`), in both parts and in the ``kd`` term. The
paper's DKD+LS recipe multiplies both DKD weights by 9 and lowers the temperature to 2
(``--logit_stand --kd_T 2 --dkd_alpha 9 --dkd_beta 72`` for β = 8), as the latest version of
its ``tools/train.py`` does; an earlier version set β to 81 (α·9 with the already multiplied
α) and left the DKD temperature at 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import kd_criterion, normalize
from distiller_zoo.flags import LOGIT_STAND
from distiller_zoo.registry import register

__all__ = ["DKD", "DKDLoss", "dkd_loss"]

DKD_ALPHA = argument("--dkd_alpha", type=float, default=1.0, help="DKD weight α of the target-class term")
DKD_BETA = argument("--dkd_beta", type=float, default=8.0, help="DKD weight β of the non-target term")
DKD_WARMUP = argument("--dkd_warmup", type=int, default=20, help="DKD linear warm-up length in epochs")


def dkd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, alpha: float,
             beta: float, temperature: float, logit_stand: bool = False) -> torch.Tensor:
    """``α·TCKD + β·NCKD`` without the warm-up, as mdistiller's and the logit-standardisation
    code's ``dkd_loss`` (same arguments, same order); ``logit_stand`` z-scores the logits first."""
    if logit_stand:
        logits_student, logits_teacher = normalize(logits_student), normalize(logits_teacher)
    T = temperature
    batch_size = logits_student.shape[0]
    target_mask = F.one_hot(target, logits_student.shape[1]).to(logits_student.dtype)

    p_student = F.softmax(logits_student / T, dim=1)
    p_teacher = F.softmax(logits_teacher / T, dim=1)
    binary_student = _target_and_rest(p_student, target_mask)
    binary_teacher = _target_and_rest(p_teacher, target_mask)
    tckd = F.kl_div(torch.log(binary_student), binary_teacher, reduction="sum") * T**2 / batch_size

    log_p_student_rest = F.log_softmax(logits_student / T - 1000.0 * target_mask, dim=1)
    p_teacher_rest = F.softmax(logits_teacher / T - 1000.0 * target_mask, dim=1)
    nckd = F.kl_div(log_p_student_rest, p_teacher_rest, reduction="sum") * T**2 / batch_size
    return alpha * tckd + beta * nckd


class DKDLoss(nn.Module):
    """Decoupled KD: ``min(epoch/warmup, 1) · (α·TCKD + β·NCKD)``, on z-scored logits if ``logit_stand``."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20,
                 logit_stand: bool = False):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.logit_stand = logit_stand

    def forward(
        self, logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * dkd_loss(logits_student, logits_teacher, target, self.alpha, self.beta, self.temperature,
                               self.logit_stand)


def _target_and_rest(probs: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: each row's probability of the target class and of all other classes together."""
    target = (probs * target_mask).sum(1, keepdim=True)
    rest = (probs * (1 - target_mask)).sum(1, keepdim=True)
    return torch.cat([target, rest], dim=1)


@register("dkd")
class DKD(Distiller):
    """DKD on the logits; ``-r 1 -a 0 -b 1`` (α, β, warm-up by the ``--dkd_*`` flags)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    uses_features = False
    arguments = (DKD_ALPHA, DKD_BETA, DKD_WARMUP, LOGIT_STAND)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup,
                 *, dkd_alpha: float, dkd_beta: float, dkd_warmup: int, logit_stand: bool | None):
        super().__init__(student, teacher, setup)
        self.kd_loss = kd_criterion(setup.kd_T, logit_stand)
        self.criterion = DKDLoss(dkd_alpha, dkd_beta, setup.kd_T, dkd_warmup, logit_stand=bool(logit_stand))

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: self.criterion(student.logits, teacher.logits, batch.targets, self.epoch)}
