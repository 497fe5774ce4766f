"""SimKD: Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022),
Eq. 2 (feature alignment) and §3.2 (prediction through the reused classifier). METHODS.md §1.20.

A projector ``P`` (Conv1×1 → Conv3×3 → Conv1×1, each without bias and followed by BN and ReLU;
hidden width ``C_t / factor``) maps the student's last map onto the teacher's, after pooling the
larger of the two maps down to the other's height:

    L_SimKD = MSE(P(f_s), f_t),        ẑ = cls_t(avg_pool(P(f_s)))

``cls_t`` is the teacher's frozen final linear layer (``teacher.get_classifier()``; SimKD's code
took the last of ``get_feat_modules()``, which is the classifier only for some families,
METHODS.md §5 item 10). ``ẑ`` is the model's prediction at training (training accuracy) *and*
test time: evaluation runs the student, the teacher (its map's height decides the pooling),
the projector and ``cls_t``. A deployable SimKD model is therefore student backbone +
projector + teacher classifier, and :meth:`SimKDDistiller.trainable_state_dict` carries the
projector (``simkd.transfer.*``) and the teacher classifier (``cls_t.*``), unlike DS-imagenet,
which dropped the projector from its checkpoints.

SimKD's recommendation is ``-c 0 -d 0 -b 1``: cross-entropy and KD are still computed on the
student's own logits but weigh nothing, so the student's own classifier gets no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import align_spatial
from distiller_zoo.registry import register

__all__ = ["SimKD", "SimKDDistiller"]

FACTOR = argument("-f", "--factor", type=int, default=2,
                  help="SimKD projector bottleneck: hidden width = teacher channels / factor")


class SimKD(nn.Module):
    """The SimKD projector (SimKD ``SimKD``; state-dict keys ``transfer.0`` … ``transfer.7``).

    ``forward(feat_s, feat_t, cls_t)`` returns ``(trans_feat_s, trans_feat_t, pred_feat_s)``:
    the projected student map, the (possibly pooled) teacher map, and ``cls_t`` applied to the
    globally average-pooled projection.
    """

    def __init__(self, s_n: int, t_n: int, factor: int = 2):
        super().__init__()
        hidden = t_n // factor
        self.transfer = nn.Sequential(
            nn.Conv2d(s_n, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, t_n, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_n),
            nn.ReLU(inplace=True),
        )

    def forward(
        self, feat_s: torch.Tensor, feat_t: torch.Tensor, cls_t: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source, target = align_spatial(feat_s, feat_t)
        trans_feat_s = self.transfer(source)
        pred_feat_s = cls_t(F.adaptive_avg_pool2d(trans_feat_s, 1).flatten(1))
        return trans_feat_s, target, pred_feat_s


@register("simkd")
class SimKDDistiller(Distiller):
    """SimKD: project the student's last map onto the teacher's and reuse the teacher's classifier."""

    recommended = Weights(gamma=0.0, alpha=0.0, beta=1.0)
    arguments = (FACTOR,)
    not_standalone = "student + projector + teacher classifier"

    @classmethod
    def recognises_checkpoint(cls, checkpoint: dict[str, Any]) -> bool:
        """SimKD's own student files keep the projector under ``'proj'``; older files of ours under ``simkd.*``."""
        distiller = checkpoint.get("distiller")
        return "proj" in checkpoint or (isinstance(distiller, dict)
                                        and any(str(key).startswith("simkd.") for key in distiller))

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, factor: int):
        super().__init__(student, teacher, setup)
        self.simkd = SimKD(s_n=self.student_shapes[-2][1], t_n=self.teacher_shapes[-2][1], factor=factor)
        # Registered here (it also stays inside the frozen teacher) so that the method's state,
        # which evaluation needs, includes it.
        self.cls_t = teacher.get_classifier()

    def distill_and_predict(self, student: Outputs, teacher: Outputs,
                            batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``ẑ`` (what training accuracy is measured on) and the alignment term."""
        trans_feat_s, trans_feat_t, pred_feat_s = self.simkd(
            student.features[-2], teacher.features[-2], self.cls_t
        )
        return pred_feat_s, {self.name: F.mse_loss(trans_feat_s, trans_feat_t)}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``ẑ``: the student's last map through the projector and the teacher's classifier."""
        student_features, _ = self.student(images, is_feat=True)
        teacher = self.run_teacher(images)
        return self.simkd(student_features[-2], teacher.features[-2], self.cls_t)[2]
