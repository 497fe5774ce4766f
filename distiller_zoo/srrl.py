"""SRRL: Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning"
(ICLR 2021), Eq. 2 (feature matching) + Eq. 3 (softmax regression). METHODS.md §1.19.

The student's embedding ``feat_s[-1]`` is mapped to the teacher's width by a 1×1 conv (no bias),
BN and ReLU, giving ``h``. It must match the teacher's embedding, and the *teacher's* frozen
classifier applied to it must reproduce the teacher's logits:

    L_SRRL = MSE(h, e_t) + MSE(cls_t(h), z_t)

``cls_t`` is the teacher's final linear layer (``teacher.get_classifier()``): frozen and not
optimised, but the gradient flows through it into ``h``. SimKD's code found it as the last of
``get_feat_modules()``, which is the classifier only for some families (METHODS.md §5 item 10);
asking the network for its classifier works for every teacher. The student keeps its own
classifier for prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.registry import register

__all__ = ["SRRL", "SRRLDistiller"]


class SRRL(nn.Module):
    """The student-to-teacher embedding transfer (SimKD ``SRRL``): Conv1×1 (no bias), BN, ReLU.

    ``forward(feat_s, cls_t)`` returns ``(trans_feat_s, pred_feat_s)``: the transferred
    embedding ``h`` ``[B, t_n]`` and the teacher classifier's logits on it.
    """

    def __init__(self, s_n: int, t_n: int):
        super().__init__()
        self.transfer = nn.Sequential(
            nn.Conv2d(s_n, t_n, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_n),
            nn.ReLU(inplace=True),
        )

    def forward(self, feat_s: torch.Tensor, cls_t: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        trans_feat_s = self.transfer(feat_s[:, :, None, None]).flatten(1)
        return trans_feat_s, cls_t(trans_feat_s)


@register("srrl")
class SRRLDistiller(Distiller):
    """SRRL on the penultimate embeddings through the teacher's classifier (SK ``-c 1 -d 1 -b 1``)."""

    recommended = Weights(gamma=1.0, alpha=1.0, beta=1.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.srrl = SRRL(s_n=self.student_shapes[-1][1], t_n=self.teacher_shapes[-1][1])

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        trans_feat_s, pred_feat_s = self.srrl(student.features[-1], self.teacher.get_classifier())
        loss = F.mse_loss(trans_feat_s, teacher.features[-1]) + F.mse_loss(pred_feat_s, teacher.logits)
        return {"srrl": loss}
