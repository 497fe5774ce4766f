"""KDSVD: Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition" (ECCV 2018). METHODS.md §1.13.

Each intermediate map (``feat[1:-1]``) is compressed into its dominant right singular vector,
and the student learns the teacher's *relations between consecutive layers* of those vectors:

1. View a map as ``X ∈ R^{B × HW × C}`` and take its batched SVD ``X = U S Vᵀ``, with
   non-finite entries set to 0. Keep the first ``n`` components (teacher ``n = k = 1``, student
   ``n = k + 3 = 4``), each L2-normalised: U and V columns (V over C) and the singular-value
   vector (so the teacher's kept singular value becomes 1).
2. Align: ``cos = V_sᵀ V_t`` (``[B, 4, 1]``); the student vector with the largest ``|cos|``,
   times ``sign(cos)``, stands for the teacher's vector. Both are scaled by the teacher's
   normalised singular value.
3. For layers ``i ≥ 1``, a Gaussian (RBF) kernel between the vectors of consecutive layers,
   ``R[c, c'] = exp(−(v_i[c] − v_{i−1}[c'])² / 8)``, for student and teacher;
   ``ℓ_i = Σ (R_s − R_t)²`` (teacher side detached, non-finite entries zeroed) ``/ B``.

The criterion returns ``len(pairs) − 1`` losses; the Distiller sums them. Step 2 multiplies a
student by a teacher singular-vector matrix, so every tapped layer must have the same channel
count in both networks (METHODS.md §5 item 5): a mismatched pair is refused when the Distiller
is built, with the layers and widths named. RepDistiller's scripts give no weight for KDSVD;
mdistiller's 1.0 is the recommendation. Upstream flattens the spatial size as ``H·H``; this is
``H·W``, identical on every (square) map of the model zoo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo.base import Distiller, DistillSetup, Outputs, Weights
from distiller_zoo.common import channel_mismatch
from distiller_zoo.registry import register

__all__ = ["KDSVD", "KDSVDDistiller"]


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class KDSVD(nn.Module):
    """SVD-based distillation of consecutive-layer relations; returns ``len(pairs) − 1`` losses."""

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        losses = []
        previous_s = previous_t = None
        for f_s, f_t in zip(g_s, g_t):
            _, s_t, v_t = self.svd(f_t, self.k)
            _, _, v_s = self.svd(f_s, self.k + 3)
            v_s = self.align_rsv(v_s, v_t)
            scale = s_t.unsqueeze(1)
            v_t = v_t * scale
            v_s = v_s * scale
            if previous_s is not None:
                rbf_s = torch.exp(-(v_s.unsqueeze(2) - previous_s.unsqueeze(1)).pow(2) / 8)
                rbf_t = torch.exp(-(v_t.unsqueeze(2) - previous_t.unsqueeze(1)).pow(2) / 8)
                losses.append(_finite((rbf_s - rbf_t.detach()).pow(2)).sum())
            previous_s, previous_t = v_s, v_t
        batch_size = g_s[0].shape[0]
        return [loss / batch_size for loss in losses]

    @staticmethod
    def svd(feat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``n`` normalised components ``U [B,HW,n]``, ``S [B,n]``, ``V [B,C,n]`` of a map."""
        x = feat.flatten(2).transpose(1, 2)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = _finite(u), _finite(s), _finite(vh.transpose(1, 2))
        return (F.normalize(u[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1),
                F.normalize(v[:, :, :n], dim=1))

    @staticmethod
    def align_rsv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The sign-corrected column of ``a`` (``[B,C,n_a]``) most aligned with ``b`` (``[B,C,1]``)."""
        cosine = a.transpose(1, 2) @ b
        best = cosine.abs().amax(1, keepdim=True)
        mask = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
        return a @ mask


@register("kdsvd")
class KDSVDDistiller(Distiller):
    """KDSVD on every intermediate map pair; needs equal channel counts (recommended ``-b 1``)."""

    recommended = Weights(gamma=1.0, alpha=0.0, beta=1.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, setup: DistillSetup):
        super().__init__(student, teacher, setup)
        self.criterion = KDSVD(k=1)

    @classmethod
    def pairing_problem(cls, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> str | None:
        if min(len(student_shapes), len(teacher_shapes)) < 4:
            return "KDSVD needs at least two intermediate feature maps in both networks"
        problem = channel_mismatch(student_shapes[1:-1], teacher_shapes[1:-1], first_index=1)
        if problem is None:
            return None
        return (f"KDSVD needs equal channel counts at every intermediate map, but {problem}; use a "
                "same-family pair of equal widths, e.g. resnet56 -> resnet20 or resnet32x4 -> resnet8x4")

    def distill(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        losses = self.criterion(student.features[1:-1], teacher.features[1:-1])
        return {self.name: torch.stack(losses).sum()}
