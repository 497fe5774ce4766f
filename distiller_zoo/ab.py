"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (AAAI 2019), Eq. 4 (the alternative L2 loss with margin). METHODS.md §1.9.

Every intermediate *pre-activation* map of the student (``preact=True``; ``feat[1:-1]``) is
mapped by a connector onto the teacher's matching map, and the student is pushed to the right
side of every teacher neuron's activation boundary: with ``s`` the connected student map, ``t``
the teacher map and margin ``m``,

    ℓ = Σ (s + m)² · 1[s > −m and t ≤ 0] + (s − m)² · 1[s ≤ m and t > 0]

summed over every element, divided by the batch size, scaled by 3/1000 and weighted
``2^{i−n+1}`` for pair ``i`` of ``n`` (the deepest pair counts 1, the one before ½, ...).

AB is two-stage, as RepDistiller runs it and as its published numbers were made:

* **init stage** (``--init_epochs``, constant learning rate = the run's): the connector and the
  student's feature modules (``get_feat_modules()``: everything but the classifier) are trained
  on the AB loss alone; the rest of the student stays in eval mode (for a WRN student its final
  ``bn1`` is not a feature module and keeps its running statistics, METHODS.md §5 item 12);
* **main stage**: no AB term at all (``-b`` has no effect, METHODS.md §5 item 2); the run is
  plain cross-entropy (+ KD with ``-a``) training of the whole student. The connector is kept
  in eval mode and is not optimised. Both stages tap with ``preact=True``, as upstream does.

Deviation (generalisation) from RepDistiller: RepDistiller asserts when the student and teacher
expose different numbers of maps, and fails inside ``ConvReg`` when a student map is smaller
than the teacher's by a ratio other than 2; here the first is a usage error naming both counts,
and the second uses the shared ``ConvReg``'s SimKD rule (a 3×3 conv; the teacher map is pooled to
the student's size, METHODS.md §0.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import DistillSetup, Outputs, Weights
from distiller_zoo.common import ConvReg, align_spatial
from distiller_zoo.init_only import InitOnlyDistiller
from distiller_zoo.registry import register
from errors import UsageError

__all__ = ["AB", "ABLoss", "Connector"]


class ABLoss(nn.Module):
    """The activation-boundary loss of ``feat_num`` map pairs (RepDistiller ``ABLoss``).

    ``forward(g_s, g_t)`` takes the connected student maps and the teacher maps, in order, and
    returns one loss per pair (already weighted, divided by the batch size and scaled by 3/1000);
    their sum is the AB term.
    """

    def __init__(self, feat_num: int, margin: float = 1.0):
        super().__init__()
        self.margin = margin
        self.layer_weights = [2.0 ** (i - feat_num + 1) for i in range(feat_num)]

    def boundary_loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 4 summed over every element: a hinge on each side of the teacher's boundary."""
        m = self.margin
        teacher_on = target > 0
        push_up = (source - m).pow(2) * ((source <= m) & teacher_on)
        push_down = (source + m).pow(2) * ((source > -m) & ~teacher_on)
        return (push_up + push_down).sum()

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        batch_size = g_s[0].shape[0]
        return [
            weight * self.boundary_loss(s, t) / batch_size * 3 / 1000
            for weight, s, t in zip(self.layer_weights, g_s, g_t)
        ]


class Connector(nn.Module):
    """One connector per map pair (RepDistiller ``Connector``): maps a student map to the teacher's.

    Identity when channels and height already agree; otherwise the FitNet regressor without its
    ReLU (conv with bias, then BN(C_t); METHODS.md §1.2 shape rule). State-dict keys are
    ``connectors.i.conv.*`` and ``connectors.i.bn.*``.
    """

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]):
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"AB pairs maps one to one, but the student exposes {len(s_shapes)} intermediate "
                f"maps and the teacher {len(t_shapes)}"
            )
        self.connectors = nn.ModuleList(
            nn.Identity() if (s[1], s[2]) == (t[1], t[2]) else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)
        )

    def forward(self, g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


@register("abound", "ab")
class AB(InitOnlyDistiller):
    """Activation boundaries: an init stage on the AB loss, then plain training (``-a 0 -b 1``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)
    preact = True

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup, *, init_epochs: int):
        super().__init__(student, teacher, setup, init_epochs=init_epochs)
        s_shapes, t_shapes = self.student_shapes[1:-1], self.teacher_shapes[1:-1]
        try:
            self.connector = Connector(s_shapes, t_shapes)
        except ValueError as error:
            raise UsageError(
                f"--distill abound: {error}; choose a student and teacher with as many stages"
            ) from None
        self.criterion = ABLoss(len(s_shapes))

    def init_modules(self) -> list[nn.Module]:
        return [self.connector]

    def init_terms(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        connected = self.connector(student.features[1:-1])
        pairs = [align_spatial(s, t) for s, t in zip(connected, teacher.features[1:-1])]
        losses = self.criterion([s for s, _ in pairs], [t for _, t in pairs])
        return {self.name: torch.stack(losses).sum()}
