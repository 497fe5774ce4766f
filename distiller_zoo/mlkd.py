"""MLKD: Jin, Wang and Lin, "Multi-Level Logit Distillation" (CVPR 2023).

The student's softened predictions are aligned with the teacher's at three levels and at
several temperatures, on two views of every image: the ordinary (weak) one and a strongly
augmented one (``Batch.strong_images``, the data need ``DataNeeds(strong_view=True)``). With
``P = softmax(z / T)`` the ``[B, C]`` predictions of a batch:

* instance level, :func:`kd_loss`: ``KL(P_t ‖ P_s) · T²`` per sample, batch mean;
* class level, :func:`cc_loss`: ``‖P_tᵀP_t − P_sᵀP_s‖²_F / C`` (the ``C × C`` class correlations);
* batch level, :func:`bc_loss`: ``‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B`` (the ``B × B`` sample similarities).

Each is summed over the temperatures ``(T, 3, 5, 2, 6)`` with ``T = --kd_T`` (4 on CIFAR:
2, 3, 4, 5, 6). The confidence masks come from the teacher on the weak view at temperature 1:
samples whose top probability is at most the batch median, classes whose summed probability
is at most the median over classes.

This file follows the released code (Jin-Ying/Multi-Level-Logit-Distillation, and the copy in
the logit-standardisation repository), whose numbers are the published ones, where it departs
from the paper's description:

* the kd, cc and bc terms are computed as batch means first and only then multiplied by a mask
  and averaged (the per-sample variant is commented out upstream), so a mask scales a term by
  the fraction of samples (or classes) it keeps, about one half, instead of selecting samples;
* the returned ``loss_kd`` is the masked weak-view sum plus an unmasked "strong" sum whose
  temperatures T, 3 and 5 use the strong view and whose 2 and 6 use the weak view again;
* upstream also computes class- and batch-level terms on the strong view but never returns
  them, so they do not train the student: they are left out here (``loss_cc`` and ``loss_bc``
  are weak-view only), which changes nothing but the time spent;
* ``--logit_stand`` (Sun et al., CVPR 2024) standardises the logits of the instance-level
  terms only, as that repository does; the cc and bc terms always see the raw logits.

Weights: upstream's total is ``ce_w · (CE_weak + CE_strong) + kd_w · (loss_kd + loss_cc +
loss_bc)`` with ``ce_w = 0.1``, ``kd_w = 0.9`` (its KD defaults). Here ``cls`` (CE on the weak
view) and ``cls_strong`` (CE on the strong view) are weighted by ``-r``; ``mlkd_kd``,
``mlkd_cc`` and ``mlkd_bc`` (the three sums above) by ``-b``; the plain KD term ``kd`` by ``-a``,
0 by default (the instance-level sum takes its place). With ``--optimizer dot`` both CE terms
count as the task loss. Logits only; no trainable parts. The strong view's forward passes run
inside :meth:`MLKD.distill`, where autocast is off, so under ``--amp`` they run in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch, DataNeeds
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import kd_criterion
from distiller_zoo.flags import LOGIT_STAND
from distiller_zoo.kd import kd_loss
from distiller_zoo.registry import register

__all__ = ["MLKD", "bc_loss", "cc_loss", "kd_loss", "mlkd_loss"]

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # upstream's, after the base temperature


def temperatures(temperature: float) -> tuple[float, ...]:
    """The temperatures of every multi-level sum, in upstream's order: the base one, then 3, 5, 2, 6."""
    return (temperature, *EXTRA_TEMPERATURES)


def cc_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class-level alignment: ``‖P_tᵀP_t − P_sᵀP_s‖²_F / C`` of the predictions softened at ``temperature``."""
    num_classes = logits_teacher.shape[1]
    p_student = F.softmax(logits_student / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher / temperature, dim=1)
    gap = p_teacher.t() @ p_teacher - p_student.t() @ p_student
    return gap.pow(2).sum() / num_classes


def bc_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch-level alignment: ``‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B`` of the predictions softened at ``temperature``."""
    batch_size = logits_teacher.shape[0]
    p_student = F.softmax(logits_student / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher / temperature, dim=1)
    gap = p_teacher @ p_teacher.t() - p_student @ p_student.t()
    return gap.pow(2).sum() / batch_size


def confidence_masks(logits_teacher_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's masks: samples (``[B]``) and classes (``[C]``) of at most median teacher confidence.

    A sample's confidence is the teacher's top probability at temperature 1 on the weak view; a
    class's is its probability summed over the batch. The median is the linearly interpolated
    50th percentile (``np.percentile``'s default, which upstream calls).
    """
    probs = F.softmax(logits_teacher_weak.detach(), dim=1)
    confidence = probs.max(dim=1).values
    class_confidence = probs.sum(dim=0)
    return (confidence <= torch.quantile(confidence, 0.5),
            class_confidence <= torch.quantile(class_confidence, 0.5))


def _masked(term: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(term · mask).mean()`` of a scalar term: the term scaled by the share of the mask that is set."""
    return (term * mask).mean()


def multi_level_terms(s_weak: torch.Tensor, s_strong: torch.Tensor, t_weak: torch.Tensor, t_strong: torch.Tensor,
                      temperature: float, logit_stand: bool = False) -> dict[str, torch.Tensor]:
    """The unweighted instance- (``kd``), class- (``cc``) and batch-level (``bc``) sums, as upstream returns them."""
    sample_mask, class_mask = confidence_masks(t_weak)
    temps = temperatures(temperature)
    kd_weak = sum(_masked(kd_loss(s_weak, t_weak, T, logit_stand), sample_mask) for T in temps)
    kd_strong = (sum(kd_loss(s_strong, t_strong, T, logit_stand) for T in temps[:3])
                 + sum(kd_loss(s_weak, t_weak, T, logit_stand) for T in temps[3:]))  # upstream: weak at 2 and 6
    return {
        "kd": kd_weak + kd_strong,
        "cc": sum(_masked(cc_loss(s_weak, t_weak, T), class_mask) for T in temps),
        "bc": sum(_masked(bc_loss(s_weak, t_weak, T), sample_mask) for T in temps),
    }


def mlkd_loss(s_weak: torch.Tensor, s_strong: torch.Tensor, t_weak: torch.Tensor, t_strong: torch.Tensor,
              target: torch.Tensor, temperature: float, ce_loss_weight: float, kd_loss_weight: float,
              logit_stand: bool = False) -> dict[str, torch.Tensor]:
    """Upstream MLKD's loss dict ``loss_ce``, ``loss_kd``, ``loss_cc``, ``loss_bc``, weights applied.

    ``loss_ce = ce_loss_weight · (CE(s_weak) + CE(s_strong))``; the other three are
    ``kd_loss_weight`` times :func:`multi_level_terms`. Their sum is the training loss.
    """
    terms = multi_level_terms(s_weak, s_strong, t_weak, t_strong, temperature, logit_stand)
    cross_entropy = F.cross_entropy(s_weak, target) + F.cross_entropy(s_strong, target)
    return {
        "loss_ce": ce_loss_weight * cross_entropy,
        "loss_kd": kd_loss_weight * terms["kd"],
        "loss_cc": kd_loss_weight * terms["cc"],
        "loss_bc": kd_loss_weight * terms["bc"],
    }


@register("mlkd")
class MLKD(Distiller):
    """MLKD on two views: ``-r 0.1 -a 0 -b 0.9`` (upstream's CE 0.1 and KD 0.9), temperatures from ``--kd_T``."""

    recommended = Weights(gamma=0.1, alpha=0.0, beta=0.9)
    uses_features = False
    arguments = (LOGIT_STAND,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, logit_stand: bool | None):
        super().__init__(student, teacher, setup)
        self.logit_stand = bool(logit_stand)
        self.kd_loss = kd_criterion(setup.kd_T, logit_stand)

    @classmethod
    def data_needs(cls, **_: object) -> DataNeeds:
        """A second, strongly augmented view of every training image."""
        return DataNeeds(strong_view=True)

    def method_weights(self, weights: Weights) -> dict[str, float]:
        """CE on the strong view at ``-r`` (upstream weighs both CE terms alike); the three sums at ``-b``."""
        return {"cls_strong": weights.gamma, "mlkd_kd": weights.beta, "mlkd_cc": weights.beta,
                "mlkd_bc": weights.beta}

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Run both networks on the strong view (the weak view's outputs are given) and align all levels."""
        if batch.strong_images is None:
            raise ValueError("mlkd trains on two views, but the batch has no strong_images "
                             "(the loader was not built with DataNeeds(strong_view=True))")
        student_strong = self.run_student(batch.strong_images).logits.float()
        teacher_strong = self.run_teacher(batch.strong_images).logits.float()
        terms = multi_level_terms(student.logits, student_strong, teacher.logits, teacher_strong,
                                  self.setup.kd_T, self.logit_stand)
        return {"cls_strong": F.cross_entropy(student_strong, batch.targets),
                **{f"mlkd_{level}": value for level, value in terms.items()}}
