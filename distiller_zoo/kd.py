"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015). METHODS.md §1.1.

The KD term itself (:class:`~distiller_zoo.common.DistillKL`) is computed by every method and
weighed by ``-a``; KD is the method whose only distillation signal it is.

``--logit_stand`` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024)
softens ``normalize(z)`` instead of ``z``: each sample's logits minus their mean, divided by
their unbiased standard deviation (+1e-7), so the student matches the teacher's logit
*relations* rather than their scale. The paper's CIFAR recipe is a base temperature of 2 and a
KD weight of 9: ``--logit_stand --kd_T 2 -r 0.1 -a 9`` (76.62 on resnet32x4→resnet8x4); KD's
own defaults (``-r 0.1 -a 0.9 --kd_T 4``) are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from distiller_zoo.base import Distiller, DistillSetup, Weights
from distiller_zoo.common import DistillKL, kd_criterion, normalize, softened_kl
from distiller_zoo.flags import LOGIT_STAND
from distiller_zoo.registry import register

__all__ = ["KD", "DistillKL", "kd_loss"]


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float | torch.Tensor,
            logit_stand: bool = False) -> torch.Tensor:
    """The KD term ``KL(p_t ‖ p_s) · T²`` (batch mean), on z-scored logits when ``logit_stand``.

    The function and call convention of the logit-standardisation code (Sun et al., CVPR 2024),
    whose KD and MLKD distillers call it.
    """
    if logit_stand:
        logits_student, logits_teacher = normalize(logits_student), normalize(logits_teacher)
    return softened_kl(logits_student, logits_teacher, temperature)


@register("kd")
class KD(Distiller):
    """Cross-entropy plus the KD term: ``-r 0.1 -a 0.9`` (RepDistiller's script)."""

    recommended = Weights(gamma=0.1, alpha=0.9, beta=0.0)
    uses_features = False
    arguments = (LOGIT_STAND,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, logit_stand: bool | None):
        super().__init__(student, teacher, setup)
        self.kd_loss = kd_criterion(setup.kd_T, logit_stand)

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """No term of its own: the KD term every Distiller computes, weighed by ``-a``, is the method."""
        return {}
