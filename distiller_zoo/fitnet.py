"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015). METHODS.md §1.2.

The hint loss regresses one teacher map ("hint") from the student map at the same position
through a trainable regressor r:

    L_hint = MSE( r(f_s), f_t ),   r = ReLU ∘ BN ∘ conv   (mean over all B·C·H·W elements)

with ``f_s = feat_s[h]``, ``f_t = feat_t[h]`` and ``h = --hint_layer`` (RepDistiller's default
2; SimKD's scripts use 1). The paper's ½ factor is not applied, as upstream.

Choices where upstream differs or is incomplete:

* **Single stage** (METHODS.md §5 item 1): the regressor is trained jointly with the student
  from the first epoch, with cross-entropy, as in RepDistiller, SimKD and distillers. The
  paper's separate hint pre-training stage is not implemented upstream, so it is not here.
* The regressor's conv follows RepDistiller's shape rule; when the student map is smaller than
  the teacher's by a ratio other than 2, where RepDistiller raises, SimKD's rule applies: a
  3×3 conv and the teacher map pooled down to the student's size (``ConvReg``'s two-argument
  form does both, and is a no-op on the teacher map in every other case).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights, argument
from distiller_zoo.common import ConvReg
from distiller_zoo.registry import register
from errors import UsageError

__all__ = ["FitNet", "HintLoss"]

HINT_LAYER = argument("--hint_layer", type=int, default=2,
                      help="FitNet: index of the feature map used as the hint (RepDistiller 2, SimKD 1)")


class HintLoss(nn.Module):
    """FitNet's hint loss: the mean squared error between the regressed student map and the hint."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(f_s, f_t)


@register("hint", "fitnet")
class FitNet(Distiller):
    """Hint regression of ``feat[--hint_layer]`` through a trainable ``ConvReg`` (``-b 100``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=100.0)
    arguments = (HINT_LAYER,)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, hint_layer: int):
        super().__init__(student, teacher, setup)
        self.hint_layer = hint_layer
        s_shape = self._map_shape(self.student_shapes, "student", setup.student_name)
        t_shape = self._map_shape(self.teacher_shapes, "teacher", setup.teacher_name)
        self.regress_s = ConvReg(s_shape, t_shape)
        self.criterion = HintLoss()

    def _map_shape(self, shapes: list[torch.Size], side: str, model: str) -> torch.Size:
        """The shape of the hinted feature map, or a usage error naming the valid indices."""
        n_maps = len(shapes) - 1  # the last feature is the pooled embedding, not a map
        if not -len(shapes) <= self.hint_layer < len(shapes) or len(shapes[self.hint_layer]) != 4:
            raise UsageError(
                f"--hint_layer {self.hint_layer} does not name a feature map of the {side} {model}: "
                f"its feature maps are indices 0..{n_maps - 1}"
            )
        return shapes[self.hint_layer]

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        f_s, f_t = self.regress_s(student.features[self.hint_layer], teacher.features[self.hint_layer])
        return {self.name: self.criterion(f_s, f_t)}
